"""The engine core: the served model, its levels and card, the controller, batcher, worker.

The front end talks to it through a small interface only (the methods under "the client
interface" below): `describe()`, `health()`, `admit()`, `infer()`, `request_started()` /
`request_finished()`, `stats()`, `render_metrics()`, `timeline()`. Everything blocking
(loading, warm-up, profiling) is a plain method the app runs in a thread before readiness.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from models import WeightsError, load_model
from models.card import LevelCard
from models.device import resolve_device
from models.preprocess import DataConfig
from service.device.factory import create_runner
from service.dial import Dial
from service.engine.batcher import Batcher, WorkItem
from service.engine.cards import (
    CardError,
    LevelFacts,
    card_accuracy,
    card_entry,
    level_facts,
    load_card,
    requested_levels,
)
from service.engine.controller import Decision, LevelInfo, LoadSnapshot, Policy, choose_level, ladder, resolve_density
from service.engine.labels import class_labels
from service.engine.latency_model import LatencyModel, profile_levels
from service.engine.load_signals import ArrivalRate, CompletionRatio
from service.engine.metrics import Metrics
from service.engine.stats import ModelStats
from service.engine.timeline import Timeline
from service.engine.worker import InferenceWorker, ItemResult
from service.errors import Expired, ServiceError, Unavailable
from service.settings import Settings

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The server cannot start; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class ModelInfo:
    """What the front end knows of the served model (metadata routes, request validation, responses).

    Args:
        name: the name clients use (`/v2/models/{name}`).
        input_size: (3, H, W) of one preprocessed image.
        data_config: how images are resized and cropped to it (decoding).
        num_classes: classes the head scores.
        labels: a short name per class.
        levels: the served levels, densest first.
        facts: per level, its GFLOPs and the card's figures.
        has_card: whether a level card is loaded (`min_accuracy` needs one).
        ladder: the controller's degradation ladder (known once warm).
        device: "cpu" or "cuda".
    """

    name: str
    input_size: tuple[int, int, int]
    data_config: DataConfig
    num_classes: int
    labels: tuple[str, ...]
    levels: tuple[str, ...]
    facts: Mapping[str, LevelFacts]
    has_card: bool
    ladder: tuple[str, ...] = ()
    device: str = "cpu"


@dataclass(frozen=True)
class Health:
    live: bool
    ready: bool


@dataclass(frozen=True)
class RequestResult:
    """The outcome of one served request (all its images ran at one level)."""

    decision: Decision
    items: list[ItemResult]
    total_ms: float
    top_k: int

    @property
    def queue_ms(self) -> float:
        return max(it.queue_s for it in self.items) * 1e3

    @property
    def compute_ms(self) -> float:
        return max(it.compute_s for it in self.items) * 1e3

    @property
    def deadline_met(self) -> bool:
        return self.total_ms <= self.decision.budget_ms

    @property
    def batch_size(self) -> int:
        return max(it.batch_size for it in self.items)

    def timing_ms(self) -> dict[str, float]:
        """Where the time went, as both APIs report it (ms, rounded to the microsecond)."""
        return {
            "queue_ms": round(self.queue_ms, 3),
            "compute_ms": round(self.compute_ms, 3),
            "total_ms": round(self.total_ms, 3),
            "budget_ms": self.decision.budget_ms,
            "predicted_ms": round(self.decision.predicted_ms, 3),
        }


class Engine:
    """Owns the served model and the request path (in this process).

    Args:
        settings: validated settings.
        model: a SparseViT.
        runner: a service.device.runner.Runner for `model` (not yet warmed up).
        card: the level card, or None.
    """

    def __init__(self, *, settings: Settings, model, runner, card: LevelCard | None):
        self.settings = settings
        self.model = model
        self.runner = runner
        self.card = card
        device = getattr(runner, "device", torch.device("cpu"))
        levels = _served_levels(model, requested_levels(settings, model, card, device))
        self.level_infos = tuple(
            LevelInfo(
                name=n, gflops_ratio=float(model.level(n).gflops_ratio), accuracy=card_accuracy(card_entry(card, n))
            )
            for n in levels
        )
        self.info = ModelInfo(
            name=settings.model_name,
            input_size=tuple(model.data_config.input_size),
            data_config=model.data_config,
            num_classes=int(model.timm_model.num_classes),
            labels=tuple(class_labels(model.timm_model.num_classes)),
            levels=levels,
            facts={n: level_facts(model.level(n), card) for n in levels},
            has_card=card is not None,
            device=getattr(runner, "device", torch.device("cpu")).type,
        )
        self.policy = Policy.from_settings(settings)
        if self.policy.fixed_density is not None:
            try:
                resolve_density(self.policy.fixed_density, self.level_infos)
            except ServiceError as exc:
                raise StartupError(f"invalid setting SAIT_POLICY ({settings.policy}): {exc.message}") from None
        self.metrics = Metrics(levels=levels, max_batch_size=settings.max_batch_size)
        self.metrics.read_queue_depth(lambda: self.batcher.snapshot() if self.batcher is not None else {})
        self.model_stats = ModelStats()
        self.latency: LatencyModel | None = None
        self.batcher: Batcher | None = None
        self.worker: InferenceWorker | None = None
        self.warm_s = 0.0
        self.torch_threads: int | None = None  # as the worker thread reports it after SAIT_TORCH_THREADS
        self.draining = False
        self.inflight = 0  # requests of this process's front end, between request_started and _finished
        self._remote_inflight: dict[object, int] = {}  # the same, as API processes report theirs
        self.failed: str | None = None  # why warm-up failed, if it did
        self._overhead_ms = 0.0  # EWMA of batch end -> response ready, see infer()
        self._completions = CompletionRatio()
        self._mailboxes: dict[asyncio.AbstractEventLoop, _Mailbox] = {}
        self._arrivals = ArrivalRate()
        self._timeline = Timeline()
        self._ready = False

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def load(cls, settings: Settings) -> Engine:
        """Load the model, the card and the runner; StartupError (one line) when impossible."""
        try:
            model = load_model(settings.model, settings.weights)
        except WeightsError as exc:
            raise StartupError(str(exc)) from None
        try:
            card = load_card(settings)
        except CardError as exc:
            raise StartupError(str(exc)) from None
        try:
            runner = create_runner(
                model,
                device=settings.device,
                precision=settings.precision,
                cuda_graphs=settings.cuda_graphs,
                compile=settings.compile,
                max_batch_size=settings.max_batch_size,
                top_k=5,
                levels=_served_levels(model, requested_levels(settings, model, card, resolve_device(settings.device))),
            )
        except (RuntimeError, ValueError) as exc:
            raise StartupError(f"cannot create the runner: {exc}") from None
        return cls(settings=settings, model=model, runner=runner, card=card)

    # -- lifecycle ----------------------------------------------------------------------------------
    def warm(self) -> None:
        """Warm up and profile every level on the worker thread, build the queues, then serve."""
        start = time.perf_counter()
        probe = None
        if self.settings.idle_probe_s > 0:
            # The sparsest level, the cheapest to time; a few images, so that the fixed cost
            # of one launch does not stand for the whole batch.
            sparsest = min(self.level_infos, key=lambda lv: lv.gflops_ratio).name
            images = torch.zeros((min(4, self.settings.max_batch_size), *self.info.input_size), dtype=torch.uint8)
            probe = (sparsest, images, self.settings.idle_probe_s)
        self.worker = InferenceWorker(runner=self.runner, on_batch=self._on_batch, probe=probe)
        profile = self.worker.prepare(self._warm_and_profile)
        by_density = sorted(self.level_infos, key=lambda lv: -lv.gflops_ratio)
        self.latency = LatencyModel(
            profile_ms=profile, max_batch_size=self.settings.max_batch_size, order=tuple(lv.name for lv in by_density)
        )
        log.info(
            "latency model per image at batch %d: %s",
            self.settings.max_batch_size,
            ", ".join(f"{lv.name}={self.latency.per_image_ms(lv.name):.1f}ms" for lv in by_density),
        )
        rungs = ladder(by_density, self.latency, self.policy)
        self.policy = dataclasses.replace(self.policy, rungs=tuple(lv.name for lv, _ in rungs))
        self.info = dataclasses.replace(self.info, ladder=self.policy.rungs)
        log.info(
            "degradation ladder: %s",
            " > ".join(f"{lv.name} (waiting <= {share:.0%} of the budget)" for lv, share in rungs),
        )
        self.batcher = Batcher(
            levels=self.info.levels,
            max_batch_size=self.settings.max_batch_size,
            max_queue_delay_ms=self.settings.max_queue_delay_ms,
            latency=self.latency,
        )
        self.worker.serve(self.batcher, self.latency)
        self.warm_s = time.perf_counter() - start
        self._ready = True
        self.metrics.ready.set(1)
        log.info(
            "ready: model=%s levels=%s warm-up+profile %.1f s", self.info.name, ",".join(self.info.levels), self.warm_s
        )

    def _warm_and_profile(self) -> dict[str, dict[int, float]]:
        """Runs on the worker thread: warm-up, then the latency profile (level -> batch -> ms)."""
        if self.settings.torch_threads:
            # Before the latency profile, so that the profile measures what will serve; on the
            # thread that runs the model (torch keeps the count process-wide, OpenMP per thread).
            torch.set_num_threads(self.settings.torch_threads)
        self.torch_threads = torch.get_num_threads()
        log.info("torch intra-op threads: %d", self.torch_threads)
        self.runner.warmup()
        self.metrics.graph_capture.set(getattr(self.runner, "capture_seconds", 0.0))
        self.metrics.graph_memory.set(getattr(self.runner, "graph_memory_bytes", 0))
        if self.info.device == "cuda":
            self.metrics.enable_gpu(self.runner.device.index or 0)
        profile = profile_levels(
            self.runner.run,
            levels=self.info.levels,
            input_size=self.info.input_size,
            max_batch_size=self.settings.max_batch_size,
        )
        for level, points in profile.items():
            log.info("latency profile %s: %s", level, ", ".join(f"b{b}={ms:.1f}ms" for b, ms in points.items()))
        return profile

    def begin_drain(self) -> None:
        """SIGTERM: readiness false; new inference refused (503); queued work still runs."""
        self.draining = True
        self.metrics.ready.set(0)

    def pending(self) -> int:
        """Requests in flight plus images queued: what a drain waits for."""
        queued = sum(self.batcher.snapshot().values()) if self.batcher is not None else 0
        return self.inflight + queued

    async def open(self) -> None:
        """Nothing to connect to in this process (the client of an engine process connects here)."""

    async def shutdown(self, timeout_s: float) -> None:
        await asyncio.to_thread(self.close, timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        self.begin_drain()
        if self.batcher is not None:
            self.batcher.close()
        if self.worker is not None:
            self.worker.stop(timeout_s)

    # -- the client interface (what the front end calls) -----------------------------------------------
    def describe(self) -> ModelInfo:
        return self.info

    def health(self) -> Health:
        live = self.worker is None or self.worker.alive
        return Health(
            live=live and self.failed is None, ready=self._ready and live and not self.draining and self.failed is None
        )

    def admit(self) -> None:
        """Raise Unavailable (503) unless new requests are accepted now."""
        if self.draining:
            raise Unavailable("server is shutting down; not accepting new requests")
        if not self.health().ready:
            raise Unavailable("model is not ready yet (loading, warming up or profiling)")

    def request_started(self) -> None:
        self.inflight += 1
        self._show_inflight()

    def request_finished(
        self, *, api: str, level: str | None, outcome: str, arrival_s: float, deadline_met: bool | None = None
    ) -> None:
        """Observe one answered inference request (exactly once per request_started)."""
        self.inflight -= 1
        self._show_inflight()
        self.record(
            api=api,
            level=level,
            outcome=outcome,
            duration_s=time.perf_counter() - arrival_s,
            deadline_met=deadline_met,
            process="0",
        )

    async def stats(self, version: str) -> dict:
        """The model's statistics in Triton's statistics-extension shape."""
        return self.model_stats.as_triton(name=self.info.name, version=version)

    async def render_metrics(self) -> tuple[bytes, str]:
        return self.metrics.render()

    async def timeline(self, since_s: float | None = None) -> list[dict]:
        """The last minutes, one sample per second from `since_s` on (service.engine.timeline)."""
        return self._timeline.samples(since_s, queued=sum(self.batcher.snapshot().values()) if self.batcher else 0)

    # -- accounting for requests answered by other processes' front ends -------------------------------
    def record(
        self,
        *,
        api: str,
        level: str | None,
        outcome: str,
        duration_s: float,
        deadline_met: bool | None = None,
        process: str = "0",
    ) -> None:
        """The one accounting record of an answered request: metrics and statistics.

        `process` is the index of the front-end process that answered it.
        """
        self.metrics.observe_request(api=api, level=level, outcome=outcome, duration_s=duration_s, process=process)
        if deadline_met is not None:
            self.metrics.observe_deadline(deadline_met)
        self.model_stats.add_request(ok=outcome == "ok", duration_s=duration_s)
        self._timeline.finished(level=level, outcome=outcome, deadline_met=deadline_met)

    def set_remote_inflight(self, source: object, requests: int) -> None:
        """What an API process reports it has in flight (0 when it has gone)."""
        if requests > 0:
            self._remote_inflight[source] = requests
        else:
            self._remote_inflight.pop(source, None)
        self._show_inflight()

    def _show_inflight(self) -> None:
        self.metrics.inflight.set(self.inflight + sum(self._remote_inflight.values()))

    async def infer(self, images: list[torch.Tensor], dial: Dial, *, arrival_s: float) -> RequestResult:
        """Choose a level, queue the images, await their results. Raises ServiceError.

        Readiness and draining are checked when the request arrives (admit), not here: a
        request accepted before SIGTERM is still served while it decodes.
        """
        if not self._ready:
            raise Unavailable("model is not ready yet (loading, warming up or profiling)")
        now_s = time.perf_counter()
        self._arrivals.add(now_s, len(images))  # shed or not, it is offered load
        load = self._load_snapshot(now_s)
        self.metrics.arrival_rate.set(load.arrival_rate_per_s)
        self._timeline.arrival(len(images), queued=load.total_queued)
        decision = choose_level(
            dial,
            load,
            self.latency,
            levels=self.level_infos,
            policy=self.policy,
            images=len(images),
            elapsed_ms=(now_s - arrival_s) * 1e3,
        )
        self.metrics.observe_choice(level=decision.level, reason=decision.reason)
        loop = asyncio.get_running_loop()
        mailbox = self._mailboxes.get(loop) or self._mailboxes.setdefault(loop, _Mailbox(loop))
        futures = [loop.create_future() for _ in images]
        deadline_s = arrival_s + decision.budget_ms / 1e3
        # The margin the controller kept for prediction error: later arrivals must not fill it.
        finish_by_s = arrival_s + decision.budget_ms * (1.0 - self.policy.safety_margin) / 1e3
        items = [
            WorkItem(
                image=img,
                level=decision.level,
                deadline_s=deadline_s,
                priority=dial.priority,
                finish_by_s=finish_by_s,
                on_done=mailbox.resolver(fut),
            )
            for img, fut in zip(images, futures)
        ]
        self.batcher.put(items)
        admitted_s = time.perf_counter()
        results = await asyncio.gather(*futures, return_exceptions=True)
        if all(isinstance(r, (ItemResult, Expired)) for r in results):  # served, or expired: time that counts
            # Against the uncorrected prediction: the correction must not chase its own tail.
            self._completions.add(
                (time.perf_counter() - admitted_s) * 1e3, decision.predicted_ms / load.completion_scale
            )
        if all(isinstance(r, ItemResult) for r in results):
            # What the queue and compute times do not explain: handing results back to a busy
            # event loop. The controller adds it to every prediction.
            worked_s = max(r.queue_s + r.compute_s for r in results)
            post_ms = max(0.0, time.perf_counter() - admitted_s - worked_s) * 1e3
            self._overhead_ms = 0.9 * self._overhead_ms + 0.1 * post_ms
        for r in results:
            if isinstance(r, BaseException):
                if isinstance(r, ServiceError):
                    r.level = decision.level
                raise r
        return RequestResult(
            decision=decision, items=list(results), total_ms=(time.perf_counter() - arrival_s) * 1e3, top_k=dial.top_k
        )

    # -- bookkeeping ------------------------------------------------------------------------------------
    def _load_snapshot(self, now_s: float) -> LoadSnapshot:
        return LoadSnapshot(
            queued=self.batcher.snapshot(),
            busy_ms=self.worker.busy_ms(),
            overhead_ms=self._overhead_ms,
            completion_scale=self._completions.scale(),
            arrival_rate_per_s=self._arrivals.rate(now_s),
        )

    def _on_batch(self, level: str, size: int, compute_s: float, queue_s: list[float]) -> None:
        self.metrics.observe_batch(level=level, size=size, compute_s=compute_s, queue_s=queue_s)
        if self.latency is not None:
            self.metrics.latency_scale.set(self.latency.scale())
        self.model_stats.add_batch(size=size, compute_s=compute_s, queue_s=queue_s)


class _Mailbox:
    """Hands results from the worker thread to one event loop, one wake-up per batch.

    The worker settles every image of a batch in a row; a wake-up of the event loop (a write
    to its self-pipe, and a thread switch) per image would cost more than the results it
    carries. So deliveries queue here, and only the first one after the loop last emptied the
    queue wakes it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Future, object]] = []

    def resolver(self, fut: asyncio.Future):
        """A callback for the worker thread that settles `fut` with what it is called with."""

        def on_done(result) -> None:
            with self._lock:
                self._pending.append((fut, result))
                wake = len(self._pending) == 1
            if wake:
                try:
                    self.loop.call_soon_threadsafe(self._settle)
                except RuntimeError:  # loop closed during shutdown: nobody is waiting any more
                    pass

        return on_done

    def _settle(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for fut, result in pending:
            if fut.done():  # the client went away and the request was cancelled
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)


def _served_levels(model, names: tuple[str, ...] | None) -> tuple[str, ...]:
    if names is None:
        return tuple(model.levels)
    unknown = [n for n in names if n not in model.levels]
    if unknown:
        raise StartupError(
            f"invalid setting SAIT_LEVELS: unknown level(s) {', '.join(unknown)}; "
            f"the model has {', '.join(model.levels)}"
        )
    # Keep the model's densest-first order whatever order the setting lists them in.
    return tuple(n for n in model.levels if n in names)
