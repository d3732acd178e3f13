"""The core both APIs share: model, levels, card, controller, batcher, worker, metrics.

Routes decode and validate, then call `Engine.infer` with uint8 images and the request's
dial; the engine asks the controller for a level, queues the images, and awaits their
results. Everything blocking (loading, warm-up, profiling) is a plain method the app runs
in a thread before readiness.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass

import torch

from models import load_model
from models.card import LevelCard
from service.batcher import Batcher, WorkItem
from service.controller import Decision, Dial, LevelInfo, LoadSnapshot, Policy, choose_level, ladder, resolve_density
from service.errors import Expired, ServiceError, Unavailable
from service.labels import class_labels
from service.latency_model import LatencyModel, profile_levels
from service.load_signals import ArrivalRate, CompletionRatio
from service.metrics import Metrics
from service.params import DialParams
from service.settings import Settings
from service.stats import ModelStats
from service.worker import InferenceWorker, ItemResult

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The server cannot start; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class RequestResult:
    """The outcome of one served request (all its images ran at one level)."""

    decision: Decision
    items: list[ItemResult]
    total_ms: float
    top_k: int = 5

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


def card_accuracy(entry) -> float | None:
    """The accuracy the `min_accuracy` dial compares: top-1, else agreement with dense; as a fraction."""
    value = entry.top1 if entry.top1 is not None else entry.agreement
    if value is None:
        return None
    return value / 100.0 if value > 1.0 else value


class Engine:
    """Owns the served model and the request path.

    Args:
        settings: validated settings.
        model: a SparseViT.
        runner: a service.runner.Runner for `model` (not yet warmed up).
        card: the level card, or None.
    """

    def __init__(self, *, settings: Settings, model, runner, card: LevelCard | None):
        self.settings = settings
        self.model = model
        self.runner = runner
        self.card = card
        self.model_name = settings.model_name
        self.input_size = tuple(model.data_config.input_size)
        self.num_classes = int(model.timm_model.num_classes)
        self.labels = class_labels(self.num_classes)
        self.levels = _served_levels(model, settings.level_names)
        self.level_infos = tuple(self._level_info(name) for name in self.levels)
        self.policy = Policy(
            fixed_density=settings.fixed_density, default_budget_ms=settings.default_budget_ms,
            safety_margin=settings.safety_margin, max_batch_size=settings.max_batch_size,
            max_queue_delay_ms=settings.max_queue_delay_ms, queue_limit=settings.queue_limit,
            degrade_from=settings.degrade_from, max_utilization=settings.max_utilization,
            overload_wait_share=settings.overload_wait_share,
        )
        if settings.fixed_density is not None:
            try:
                resolve_density(settings.fixed_density, self.level_infos)
            except ServiceError as exc:
                raise StartupError(f"invalid setting SAIT_POLICY ({settings.policy}): {exc.message}") from None
        self.metrics = Metrics(levels=self.levels, max_batch_size=settings.max_batch_size)
        self.metrics.read_queue_depth(lambda: self.batcher.snapshot() if self.batcher is not None else {})
        self.stats = ModelStats()
        self.latency: LatencyModel | None = None
        self.batcher: Batcher | None = None
        self.worker: InferenceWorker | None = None
        self.warm_s = 0.0
        self.torch_threads: int | None = None  # as the worker thread reports it after SAIT_TORCH_THREADS
        self.draining = False
        self.inflight = 0
        self.failed: str | None = None  # why warm-up failed, if it did
        self._overhead_ms = 0.0  # EWMA of batch end -> response ready, see infer()
        self._completions = CompletionRatio()
        self._arrivals = ArrivalRate()
        self._ready = False

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def load(cls, settings: Settings) -> "Engine":
        """Load the model, the card and the runner; StartupError (one line) when impossible."""
        from models import WeightsError
        from service.runner import create_runner

        try:
            model = load_model(settings.model, settings.weights)
        except WeightsError as exc:
            raise StartupError(str(exc)) from None
        card = load_card(settings)
        try:
            runner = create_runner(model, device=settings.device, precision=settings.precision,
                                   cuda_graphs=settings.cuda_graphs, max_batch_size=settings.max_batch_size, top_k=5,
                                   levels=_served_levels(model, settings.level_names))
        except (RuntimeError, ValueError) as exc:
            raise StartupError(f"cannot create the runner: {exc}") from None
        return cls(settings=settings, model=model, runner=runner, card=card)

    def _level_info(self, name: str) -> LevelInfo:
        level = self.model.level(name)
        accuracy = None
        if self.card is not None:
            try:
                accuracy = card_accuracy(self.card.entry(name))
            except KeyError:
                accuracy = None
        return LevelInfo(name=name, gflops_ratio=float(level.gflops_ratio), accuracy=accuracy)

    def level_facts(self, name: str) -> dict:
        """What a response says about the level that ran: GFLOPs and card accuracy/agreement."""
        level = self.model.level(name)
        facts = {"gflops": round(level.gflops, 4), "gflops_ratio": round(level.gflops_ratio, 4),
                 "top1": None, "agreement": None}
        if self.card is not None:
            try:
                entry = self.card.entry(name)
                facts.update(top1=entry.top1, agreement=entry.agreement)
            except KeyError:
                pass
        return facts

    # -- lifecycle ----------------------------------------------------------------------------------
    def warm(self) -> None:
        """Warm up and profile every level on the worker thread, then serve; then the engine is ready."""
        start = time.perf_counter()
        probe = None
        if self.settings.idle_probe_s > 0:
            # The sparsest level, the cheapest to time; a few images, so that the fixed cost
            # of one launch does not stand for the whole batch.
            sparsest = min(self.level_infos, key=lambda lv: lv.gflops_ratio).name
            images = torch.zeros((min(4, self.settings.max_batch_size), *self.input_size), dtype=torch.uint8)
            probe = (sparsest, images, self.settings.idle_probe_s)
        self.worker = InferenceWorker(runner=self.runner, on_batch=self._on_batch, probe=probe)
        self.worker.start(prepare=self._prepare)
        self.worker.wait_prepared()
        self.latency, self.batcher = self.worker.latency, self.worker.batcher
        self.warm_s = time.perf_counter() - start
        self._ready = True
        self.metrics.ready.set(1)
        log.info("ready: model=%s levels=%s warm-up+profile %.1f s", self.model_name, ",".join(self.levels), self.warm_s)

    def _prepare(self) -> tuple[Batcher, LatencyModel]:
        """Runs on the worker thread: warm-up, latency profile, queues."""
        if self.settings.torch_threads:
            # Before the latency profile, so that the profile measures what will serve; on the
            # thread that runs the model (torch keeps the count process-wide, OpenMP per thread).
            torch.set_num_threads(self.settings.torch_threads)
        self.torch_threads = torch.get_num_threads()
        log.info("torch intra-op threads: %d", self.torch_threads)
        self.runner.warmup()
        self.metrics.graph_capture.set(getattr(self.runner, "capture_seconds", 0.0))
        self.metrics.graph_memory.set(getattr(self.runner, "graph_memory_bytes", 0))
        if getattr(self.runner, "device", torch.device("cpu")).type == "cuda":
            self.metrics.enable_gpu(self.runner.device.index or 0)
        profile = profile_levels(self.runner.run, levels=self.levels, input_size=self.input_size,
                                 max_batch_size=self.settings.max_batch_size)
        for level, points in profile.items():
            log.info("latency profile %s: %s", level, ", ".join(f"b{b}={ms:.1f}ms" for b, ms in points.items()))
        by_density = sorted(self.level_infos, key=lambda lv: -lv.gflops_ratio)
        latency = LatencyModel(profile_ms=profile, max_batch_size=self.settings.max_batch_size,
                               order=tuple(lv.name for lv in by_density))
        log.info("latency model per image at batch %d: %s", self.settings.max_batch_size,
                 ", ".join(f"{lv.name}={latency.per_image_ms(lv.name):.1f}ms" for lv in by_density))
        rungs = ladder(by_density, latency, self.policy)
        self.policy = dataclasses.replace(self.policy, rungs=tuple(lv.name for lv, _ in rungs))
        log.info("degradation ladder: %s", " > ".join(
            f"{lv.name} (waiting <= {share:.0%} of the budget)" for lv, share in rungs))
        batcher = Batcher(levels=self.levels, max_batch_size=self.settings.max_batch_size,
                          max_queue_delay_ms=self.settings.max_queue_delay_ms, latency=latency)
        return batcher, latency

    @property
    def ready(self) -> bool:
        return self._ready and not self.draining and self.worker is not None and self.worker.alive

    def begin_drain(self) -> None:
        """SIGTERM: readiness false; new inference refused (503); queued work still runs."""
        self.draining = True
        self.metrics.ready.set(0)

    def close(self, timeout_s: float = 5.0) -> None:
        self.draining = True
        self.metrics.ready.set(0)
        if self.batcher is not None:
            self.batcher.close()
        if self.worker is not None:
            self.worker.stop(timeout_s)

    # -- the request path ------------------------------------------------------------------------------
    def load_snapshot(self) -> LoadSnapshot:
        queued = self.batcher.snapshot() if self.batcher is not None else {}
        busy = self.worker.busy_ms() if self.worker is not None else 0.0
        return LoadSnapshot(queued=queued, busy_ms=busy, overhead_ms=self._overhead_ms,
                            completion_scale=self._completions.scale(),
                            arrival_rate_per_s=self._arrivals.rate(time.perf_counter()))

    def check_accepting(self) -> None:
        if self.draining:
            raise Unavailable("server is shutting down; not accepting new requests")
        if not self.ready:
            raise Unavailable("model is not ready yet (loading, warming up or profiling)")

    async def infer(self, images: list[torch.Tensor], params: DialParams, *, arrival_s: float) -> RequestResult:
        """Choose a level, queue the images, await their results. Raises ServiceError.

        Readiness and draining are checked when the request arrives (check_accepting), not
        here: a request accepted before SIGTERM is still served while it decodes.
        """
        if not self._ready:
            raise Unavailable("model is not ready yet (loading, warming up or profiling)")
        dial = Dial(density=params.density, latency_budget_ms=params.latency_budget_ms,
                    min_accuracy=params.min_accuracy, images=len(images),
                    elapsed_ms=(time.perf_counter() - arrival_s) * 1e3)
        self._arrivals.add(time.perf_counter(), len(images))  # shed or not, it is offered load
        load = self.load_snapshot()
        self.metrics.arrival_rate.set(load.arrival_rate_per_s)
        decision = choose_level(dial, load, self.latency, levels=self.level_infos, policy=self.policy)
        self.metrics.level_chosen.labels(level=decision.level, reason=decision.reason).inc()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        deadline_s = arrival_s + decision.budget_ms / 1e3
        # The margin the controller kept for prediction error: later arrivals must not fill it.
        finish_by_s = arrival_s + decision.budget_ms * (1.0 - self.policy.safety_margin) / 1e3
        items = [
            WorkItem(image=img, level=decision.level, deadline_s=deadline_s, priority=params.priority,
                     finish_by_s=finish_by_s, on_done=_resolver(loop, fut))
            for img, fut in zip(images, futures)
        ]
        self.batcher.put(items)
        admitted_s = time.perf_counter()
        results = await asyncio.gather(*futures, return_exceptions=True)
        if all(isinstance(r, (ItemResult, Expired)) for r in results):  # served, or expired: time that counts
            # Against the uncorrected prediction: the correction must not chase its own tail.
            self._completions.add((time.perf_counter() - admitted_s) * 1e3,
                                  decision.predicted_ms / load.completion_scale)
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
        return RequestResult(decision=decision, items=list(results), total_ms=(time.perf_counter() - arrival_s) * 1e3,
                             top_k=params.top_k)

    def top_k(self, item: ItemResult, k: int) -> tuple[list[float], list[int]]:
        if k <= item.topk_indices.numel():
            return item.topk_values[:k].tolist(), item.topk_indices[:k].tolist()
        values, indices = item.probs.topk(min(k, item.probs.numel()))
        return values.tolist(), indices.tolist()

    # -- bookkeeping ------------------------------------------------------------------------------------
    def _on_batch(self, level: str, size: int, compute_s: float, queue_s: list[float]) -> None:
        self.metrics.observe_batch(level=level, size=size, compute_s=compute_s, queue_s=queue_s)
        if self.latency is not None:
            self.metrics.latency_scale.set(self.latency.scale())
        self.stats.add_batch(size=size, compute_s=compute_s, queue_s=queue_s)

    def record(self, *, api: str, level: str | None, outcome: str, arrival_s: float,
               deadline_met: bool | None = None) -> None:
        """Observe one answered inference request (exactly once per request)."""
        duration_s = time.perf_counter() - arrival_s
        self.metrics.observe_request(api=api, level=level, outcome=outcome, duration_s=duration_s)
        if deadline_met is not None:
            self.metrics.deadline.labels(result="met" if deadline_met else "missed").inc()
        self.stats.add_request(ok=outcome == "ok", duration_s=duration_s)


def _resolver(loop: asyncio.AbstractEventLoop, fut: asyncio.Future):
    """A callback for the worker thread that settles `fut` on the event loop."""

    def settle(result) -> None:
        if fut.done():  # the client went away and the request was cancelled
            return
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)

    def on_done(result) -> None:
        try:
            loop.call_soon_threadsafe(settle, result)
        except RuntimeError:  # loop closed during shutdown: nobody is waiting any more
            pass

    return on_done


def _served_levels(model, names: tuple[str, ...] | None) -> tuple[str, ...]:
    if names is None:
        return tuple(model.levels)
    unknown = [n for n in names if n not in model.levels]
    if unknown:
        raise StartupError(f"invalid setting SAIT_LEVELS: unknown level(s) {', '.join(unknown)}; "
                           f"the model has {', '.join(model.levels)}")
    # Keep the model's densest-first order whatever order the setting lists them in.
    return tuple(n for n in model.levels if n in names)


def load_card(settings: Settings) -> LevelCard | None:
    """SAIT_LEVEL_CARD when given (must load), else the packaged card if there is one."""
    if settings.level_card:
        try:
            return LevelCard.load(settings.level_card)
        except (OSError, ValueError) as exc:
            raise StartupError(f"invalid setting SAIT_LEVEL_CARD: {exc}") from None
    try:
        card = LevelCard.for_model(settings.model)
    except FileNotFoundError:
        log.info("no level card for %s: min_accuracy requests will be refused (set SAIT_LEVEL_CARD)", settings.model)
        return None
    except ValueError as exc:
        log.warning("packaged level card for %s is unusable (%s); serving without one", settings.model, exc)
        return None
    return card
