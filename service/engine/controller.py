"""The controller: which level serves a request, or whether to refuse it now.

`choose_level` is a pure function of (the request's dial, a load snapshot, a latency model,
the policy); it reads no clock and touches no queue, so tables of cases test it directly.

Rules, in order:
1. Queue full (queued images + this request > SAIT_QUEUE_LIMIT): shed (429).
2. Candidates: the request's `density` pins one level; else a `fixed:<density>` policy pins
   one; else `min_accuracy` allows the levels whose card accuracy meets it; else every level.
3. Predicted completion of the request at a level L, queue-aware: the remaining time of the
   batch in flight, plus draining every other level's queue, plus draining L's queue with
   this request's images in it (in full batches once that queue is deeper than one batch),
   plus the batching delay when its batch would not be full, plus the recently measured
   hand-back overhead.
4. Deadline: the budget (the request's, else SAIT_DEFAULT_BUDGET_MS), less the safety margin,
   less the time already spent (decoding), is the usable budget. No candidate predicted to
   finish within it: shed (429, Retry-After) rather than serving late. `min_accuracy`
   without a budget asks for the fastest level that meets the floor.
5. Otherwise the densest candidate that fits serves the request, subject to the degradation
   ladder: the work already waiting (the batch in flight plus every queue, in ms) may take
   at most a share of the usable budget before a level is skipped. The shares rise evenly
   from SAIT_DEGRADE_FROM for the densest level to 1 for the sparsest, over few rungs that
   each buy real speed (see `ladder`). Why a ladder and not only "the densest that fits": a dense request
   admitted into a queue that already holds most of the budget keeps the queue there, and
   under overload the queue settles at the budget, so nearly every request then waits the
   whole budget and the next burst is shed — the sparse levels, which drain the queue,
   are never chosen. With the ladder the queue itself is the load signal: it grows until the
   mix of levels served keeps up with the arrivals, and settles lower the sparser the
   levels must be, leaving the rest of the budget as slack for bursts.
6. Sustained load: a rung is skipped, too, when the recent arrival rate would take more than
   SAIT_MAX_UTILIZATION of its capacity (images per second in full batches). The queue
   alone reacts late and mixes levels: under a steady 2x load it must first fill before
   requests step down, and while it does, denser requests keep taking the time the sparser
   ones need, so the server sheds what a sparser level alone would have served. The rate
   rule serves a steady overload at the level that keeps up with it; the queue rule still
   answers the bursts on top.
7. Overload: when the arrival rate exceeds even the sparsest rung's capacity, the waiting
   work may fill only part of the usable budget; past it the request is shed. The part
   shrinks from all of it at that capacity to SAIT_OVERLOAD_WAIT_SHARE at OVERLOAD_FULL_AT
   times it (`overload_wait_share`). Far past capacity the excess must be shed anyway, and a
   standing queue buys no throughput: a short queue leaves the rest of the budget as slack
   for the prediction error, which under overload is largest. Just past capacity, a deep
   queue absorbs the bursts of random arrivals, which average out, and a short one would shed
   them. (The overload runs that showed both are in docs/loadtest.md.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol

from service.dial import Dial
from service.errors import BadRequest, Shed
from service.settings import Settings

REASONS = ("budget", "density", "accuracy", "policy")

# Arrivals at this multiple of the sparsest rung's capacity get the full overload queue limit
# (SAIT_OVERLOAD_WAIT_SHARE); between 1x and here the limit tightens linearly from none.
OVERLOAD_FULL_AT = 1.5


class LatencyPredictor(Protocol):
    def predict_ms(self, level: str, batch_size: int) -> float: ...


@dataclass(frozen=True)
class LevelInfo:
    """What the controller knows about a level.

    Args:
        name: level name ("dense", "l070", ...).
        gflops_ratio: GFLOPs relative to dense (1.0 for dense).
        accuracy: card accuracy as a fraction (None without a card).
    """

    name: str
    gflops_ratio: float
    accuracy: float | None = None


@dataclass(frozen=True)
class LoadSnapshot:
    """The load when the request arrives.

    Args:
        queued: images waiting per level.
        busy_ms: predicted remaining compute of the batch now running (0 when idle).
        overhead_ms: recent time from a batch's end to its response being ready (handing
            results back to the event loop), which no compute profile sees.
        completion_scale: recent measured / predicted completion time of served requests
            (>= 1): what the batch-level corrections miss under load (batches smaller than
            costed, CPU taken by request handling between batches). Waiting work and
            predicted completions are multiplied by it.
        arrival_rate_per_s: images reaching the controller per second, recently (shed ones
            included: the offered load); 0 when unknown, which turns the rate rule off.
    """

    queued: Mapping[str, int] = field(default_factory=dict)
    busy_ms: float = 0.0
    overhead_ms: float = 0.0
    completion_scale: float = 1.0
    arrival_rate_per_s: float = 0.0

    @property
    def total_queued(self) -> int:
        return sum(self.queued.values())


@dataclass(frozen=True)
class Policy:
    """Server-wide settings the controller applies.

    Args:
        fixed_density: for `fixed:<density>`, the density (a level name or a number in (0, 1],
            as service.dial.parse_density returns it); None for adaptive.
        default_budget_ms: budget of a request that gives none.
        safety_margin: fraction of the budget kept as margin.
        max_batch_size: largest batch.
        max_queue_delay_ms: longest wait to fill a batch.
        queue_limit: queued images before shedding.
        degrade_from: share of the usable budget the waiting work may fill before the densest
            level is skipped (the ladder's first rung); 1.0 turns the ladder off.
        min_speedup: between the densest and the sparsest level, a level is a rung of the
            ladder when it is predicted at least this much slower per image than the rung
            below it (so each rung buys real speed, and load spreads over few queues).
        rungs: the ladder fixed once (the engine picks it from the start-up profile, so that
            online corrections do not make levels flicker in and out of it); None: chosen
            from the current predictions on every request.
        max_utilization: the share of a rung's capacity (images per second in full batches,
            as predicted now) the arrival rate may take before that rung is skipped.
        overload_wait_share: when the arrival rate exceeds the sparsest rung's capacity, the
            share of the usable budget the waiting work may fill before requests are shed.
    """

    fixed_density: str | float | None = None
    default_budget_ms: float = 1000.0
    safety_margin: float = 0.1
    max_batch_size: int = 32
    max_queue_delay_ms: float = 5.0
    queue_limit: int = 512
    degrade_from: float = 0.3
    min_speedup: float = 1.2
    rungs: tuple[str, ...] | None = None
    max_utilization: float = 0.85
    overload_wait_share: float = 0.6

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """The policy the settings name (every field of the same name, the fixed density parsed)."""
        same = {f.name: getattr(settings, f.name) for f in fields(cls) if f.name in Settings.model_fields}
        return cls(**same, fixed_density=settings.fixed_density)


@dataclass(frozen=True)
class Decision:
    """The level that serves the request, why, and the deadline it was admitted against."""

    level: str
    reason: str
    predicted_ms: float
    budget_ms: float


def resolve_density(density: str | float, levels: Sequence[LevelInfo]) -> LevelInfo:
    """A level name, or the densest level whose GFLOPs ratio does not exceed the number.

    `density` was validated by service.dial.parse_density (requests and the policy setting).
    """
    if isinstance(density, str):
        for lv in levels:
            if lv.name == density:
                return lv
        raise BadRequest(f"unknown level {density!r}; served levels: {', '.join(lv.name for lv in levels)}")
    fitting = [lv for lv in levels if lv.gflops_ratio <= density + 1e-9]
    if not fitting:
        sparsest = min(levels, key=lambda lv: lv.gflops_ratio)
        raise BadRequest(
            f"density {density} is below the sparsest served level {sparsest.name} "
            f"(GFLOPs ratio {sparsest.gflops_ratio:.3f})"
        )
    return max(fitting, key=lambda lv: lv.gflops_ratio)


def drain_ms(latency: LatencyPredictor, level: str, images: int, max_batch_size: int) -> float:
    """Compute time of `images` at `level`, run in batches of at most max_batch_size."""
    full, rest = divmod(images, max_batch_size)
    return full * latency.predict_ms(level, max_batch_size) + (latency.predict_ms(level, rest) if rest else 0.0)


def waiting_ms(load: LoadSnapshot, latency: LatencyPredictor, policy: Policy) -> float:
    """Work ahead of any new request: the batch in flight, the hand-back overhead, every queue."""
    return load.completion_scale * (
        load.busy_ms
        + load.overhead_ms
        + sum(
            drain_ms(latency, level, queued, policy.max_batch_size)
            for level, queued in load.queued.items()
            if queued > 0
        )
    )


def ladder(candidates: Sequence[LevelInfo], latency: LatencyPredictor, policy: Policy) -> list[tuple[LevelInfo, float]]:
    """(level, share of the usable budget the waiting work may fill) for the rungs, densest first.

    The densest candidate (accuracy when there is time) and the sparsest (capacity when there
    is not) are always rungs; in between, walking up from the sparsest, a level is a rung when
    it costs at least `min_speedup` times the rung below it per image (in a full batch).
    Few, well-separated rungs matter on top of accuracy: each level has its own queue, and
    requests spread over many levels make many small batches, which on a CPU cost up to twice
    as much per image as full ones. Shares rise evenly from `degrade_from` to 1.
    """
    last = len(candidates) - 1
    if policy.rungs is not None:
        rungs = [lv for i, lv in enumerate(candidates) if i in (0, last) or lv.name in policy.rungs]
    else:
        b = policy.max_batch_size
        cost = [latency.predict_ms(lv.name, b) / b for lv in candidates]
        kept = [last]
        for i in range(last - 1, -1, -1):
            if cost[i] >= policy.min_speedup * cost[kept[-1]]:
                kept.append(i)
        if kept[-1] != 0:  # the densest is too close to the densest rung kept: it takes that place
            if len(kept) > 1:
                kept[-1] = 0
            else:
                kept.append(0)
        rungs = [candidates[i] for i in reversed(kept)]
    if len(rungs) == 1:
        return [(rungs[0], 1.0)]
    step = (1.0 - policy.degrade_from) / (len(rungs) - 1)
    return [(lv, policy.degrade_from + step * i) for i, lv in enumerate(rungs)]


def keeps_up(
    rungs: Sequence[tuple[LevelInfo, float]], load: LoadSnapshot, latency: LatencyPredictor, policy: Policy
) -> list[tuple[LevelInfo, float]]:
    """The rungs whose capacity the recent arrival rate fills to at most max_utilization.

    Capacity is counted in full batches (under load the batcher fills them); see
    `utilization`. When no rung keeps up, the sparsest stays: the deadline check then sheds the excess.
    """
    kept = [
        (lv, share)
        for lv, share in rungs
        if utilization(lv.name, load, latency, policy, stretched=False) <= policy.max_utilization
    ]
    return kept or list(rungs[-1:])


def utilization(level: str, load: LoadSnapshot, latency: LatencyPredictor, policy: Policy, *, stretched: bool) -> float:
    """The share of the server's time the recent arrival rate would take, all served at `level`.

    Per image in a full batch, from the (online-corrected) batch predictions. `stretched`
    multiplies by the completion scale, which says how much slower than predicted the
    server really drains its queue under load; the overload test uses it (a short queue a
    little early costs little), the choice of rung does not: at light load the scale is large
    for other reasons (fixed costs dominate short waits), and a stretched rate would leave the
    densest level at loads it serves well.
    """
    b = policy.max_batch_size
    per_image_ms = latency.predict_ms(level, b) / b
    if stretched:
        per_image_ms *= load.completion_scale
    return load.arrival_rate_per_s * per_image_ms / 1e3


def overload_wait_share(utilization_of_sparsest: float, policy: Policy) -> float:
    """The share of the usable budget the waiting work may fill, given the sparsest rung's utilization.

    No limit (1) while the sparsest rung keeps up; from there it tightens linearly to
    SAIT_OVERLOAD_WAIT_SHARE at OVERLOAD_FULL_AT times that rung's capacity. Just past
    capacity a queue as deep as the deadline allows absorbs the bursts of random arrivals,
    which a short queue would shed although they average out; far past it the excess must be
    shed anyway, and a short queue keeps slack for the prediction error instead.
    """
    excess = (utilization_of_sparsest - 1.0) / (OVERLOAD_FULL_AT - 1.0)
    if excess <= 0.0:
        return 1.0
    return 1.0 - (1.0 - policy.overload_wait_share) * min(excess, 1.0)


def predicted_completion_ms(
    level: str, images: int, load: LoadSnapshot, latency: LatencyPredictor, policy: Policy
) -> float:
    """When a request of `images` joining `level`'s queue now is predicted to finish (ms from now)."""
    ahead = load.busy_ms + load.overhead_ms
    for other, queued in load.queued.items():
        if other != level and queued > 0:
            ahead += drain_ms(latency, other, queued, policy.max_batch_size)
    mine = load.queued.get(level, 0) + images
    b = policy.max_batch_size
    if mine > b:
        # A queue deeper than one batch keeps the batcher filling full batches: the request's
        # batch will be full too (later arrivals join it), so it needs the time of a full
        # one. Costing it as the partial batch it is now would admit requests whose batch
        # the batcher must then cut short to save them, and under overload those small,
        # slow batches would feed on themselves.
        ahead += -(-mine // b) * latency.predict_ms(level, b)
    else:
        ahead += drain_ms(latency, level, mine, b)
    if mine % policy.max_batch_size:
        ahead += policy.max_queue_delay_ms  # a batch that is not full may wait to fill
    return ahead * load.completion_scale


def choose_level(
    dial: Dial,
    load: LoadSnapshot,
    latency: LatencyPredictor,
    *,
    levels: Sequence[LevelInfo],
    policy: Policy,
    images: int = 1,
    elapsed_ms: float = 0.0,
) -> Decision:
    """The level for a request of `images` images, or Shed/BadRequest. Pure: no clock, no side effects.

    `elapsed_ms` is the time already spent on the request (receiving, decoding) when it
    reaches the controller: spent budget.
    """
    if not levels:
        raise ValueError("no levels to choose from")
    if load.total_queued + images > policy.queue_limit:
        wait_ms = load.busy_ms + sum(drain_ms(latency, lv, q, policy.max_batch_size) for lv, q in load.queued.items())
        raise Shed(
            f"queue full: {load.total_queued} images queued, limit {policy.queue_limit} (SAIT_QUEUE_LIMIT)",
            retry_after_s=wait_ms / 1e3,
        )
    budget_ms = dial.budget_ms(policy.default_budget_ms)
    usable_ms = budget_ms * (1.0 - policy.safety_margin) - elapsed_ms

    fastest_first = False
    if dial.density is not None:
        candidates, reason = [resolve_density(dial.density, levels)], "density"
    elif dial.min_accuracy is not None:
        candidates = levels_meeting(dial.min_accuracy, levels)
        reason = "accuracy" if dial.latency_budget_ms is None else "budget"
        fastest_first = dial.latency_budget_ms is None
    elif policy.fixed_density is not None:
        candidates, reason = [resolve_density(policy.fixed_density, levels)], "policy"
    else:
        candidates, reason = list(levels), "budget"

    order = sorted(candidates, key=lambda lv: lv.gflops_ratio, reverse=not fastest_first)
    if fastest_first:
        rungs = [(lv, 1.0) for lv in order]
    else:
        rungs = keeps_up(ladder(order, latency, policy), load, latency, policy)
        waiting = waiting_ms(load, latency, policy)
        sparsest = rungs[-1][0].name
        share = overload_wait_share(utilization(sparsest, load, latency, policy, stretched=True), policy)
        if share < 1.0 and waiting > share * usable_ms:
            raise Shed(
                f"overloaded: {load.arrival_rate_per_s:.0f} images/s arrive, more than even {sparsest} can serve; "
                f"the queue is kept under {share:.2g} of the budget (SAIT_OVERLOAD_WAIT_SHARE)",
                retry_after_s=waiting / 1e3,
            )
        # The sparsest rung has share 1: it always stays, and only the deadline can refuse it.
        rungs = [(lv, share) for lv, share in rungs if waiting <= share * usable_ms] or rungs[-1:]
    best_ms = math.inf
    for lv, _ in rungs:
        ms = predicted_completion_ms(lv.name, images, load, latency, policy)
        best_ms = min(best_ms, ms)
        if ms <= usable_ms:
            return Decision(level=lv.name, reason=reason, predicted_ms=ms, budget_ms=budget_ms)
    names = ", ".join(lv.name for lv in order)
    raise Shed(
        f"cannot meet the {budget_ms:g} ms budget: predicted {best_ms:.0f} ms at the fastest allowed level "
        f"({names}) with {load.total_queued} images queued",
        retry_after_s=max(best_ms - usable_ms, 0.0) / 1e3,
    )


def levels_meeting(min_accuracy: float, levels: Sequence[LevelInfo]) -> list[LevelInfo]:
    """Levels whose card accuracy is at least the floor; BadRequest when none or no card."""
    known = [lv for lv in levels if lv.accuracy is not None]
    if not known:
        raise BadRequest("min_accuracy needs a level card with measured accuracy; none is loaded (set SAIT_LEVEL_CARD)")
    meeting = [lv for lv in known if lv.accuracy >= min_accuracy - 1e-12]
    if not meeting:
        best = max(known, key=lambda lv: lv.accuracy)
        raise BadRequest(
            f"no level reaches min_accuracy {min_accuracy}: the best is {best.name} with {best.accuracy:.4f}"
        )
    return meeting
