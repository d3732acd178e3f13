"""The one inference thread: it alone owns the model and the device (docs/architecture.md, invariant 4).

It takes batches from the batcher, runs them, and hands each image its result through the
item's callback. Expired images are answered 504 without compute. A batch that raises fails
only its own images (500) and the loop goes on; nothing a batch does stops the thread.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import torch

from service.engine.batcher import Batch, Batcher
from service.engine.latency_model import LatencyModel
from service.errors import Expired, InternalError
from service.proc import set_thread_name

log = logging.getLogger(__name__)

# The inference thread's name in /proc: bench.request_cost tells model compute apart by it.
WORKER_THREAD_NAME = "sait-worker"


@dataclass(frozen=True)
class ItemResult:
    """One image's result.

    Args:
        probs: float32 [C] probabilities.
        topk_values, topk_indices: the runner's top-k for this image.
        queue_s: time in the queue before its batch started.
        compute_s: compute time of its batch.
        batch_size: images in its batch.
    """

    probs: torch.Tensor
    topk_values: torch.Tensor
    topk_indices: torch.Tensor
    queue_s: float
    compute_s: float
    batch_size: int

    def top(self, k: int) -> tuple[list[float], list[int]]:
        """The k most probable classes (probabilities, indices), highest first."""
        if k <= self.topk_indices.numel():
            return self.topk_values[:k].tolist(), self.topk_indices[:k].tolist()
        values, indices = self.probs.topk(min(k, self.probs.numel()))
        return values.tolist(), indices.tolist()


class InferenceWorker:
    """Runs batches from a batcher with `runner` on a dedicated thread.

    The thread starts with `prepare(fn)`: fn (warm-up, profiling) runs on it and its result
    comes back to the caller, who builds the batcher and latency model from it and hands
    them over with `serve`; the loop starts then. So the thread that serves is the thread
    that was measured, and no other thread ever touches the model (invariant 4). Tests that
    need no warm-up pass `batcher` and `latency` here and call `start()`.

    Args:
        runner: a service.device.runner.Runner.
        batcher: the queues (None until `serve`).
        latency: corrected online with each measured batch (None until `serve`).
        on_batch: called after every batch with (level, size, compute_s, queue_s list) for metrics.
        probe: (level, uint8 input batch, idle seconds) — after that long without a batch the
            worker runs this input once and folds its time into the latency model, so that a
            machine that slowed down (or sped up) while the server was idle does not meet the
            next burst with a stale prediction; None: never.
    """

    def __init__(
        self,
        *,
        runner,
        batcher: Batcher | None = None,
        latency: LatencyModel | None = None,
        on_batch=None,
        probe: tuple[str, torch.Tensor, float] | None = None,
    ):
        self.runner = runner
        self.batcher = batcher
        self.latency = latency
        self.on_batch = on_batch
        self.probe = probe
        self._last_compute_s = time.perf_counter()
        self.probes_run = 0
        self._busy: tuple[float, float] | None = None  # (start perf_counter, predicted s)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._prepared = threading.Event()
        self._serving = threading.Event()
        self._prepare_result: tuple[object, BaseException | None] = (None, None)
        self.batches_run = 0
        self.batches_failed = 0

    def prepare(self, fn, timeout_s: float | None = None):
        """Start the thread, run `fn()` on it first, and return what it returned (or raise what it raised)."""
        self._thread = threading.Thread(target=self._main, args=(fn,), name="inference-worker", daemon=True)
        self._thread.start()
        if not self._prepared.wait(timeout_s):
            raise TimeoutError(f"worker not prepared after {timeout_s} s")
        result, error = self._prepare_result
        if error is not None:
            raise error
        return result

    def serve(self, batcher: Batcher, latency: LatencyModel) -> None:
        """Hand the prepared thread its queues and latency model: the loop starts."""
        self.batcher, self.latency = batcher, latency
        self._serving.set()

    def start(self) -> None:
        """Start serving at once with the batcher and latency model given to the constructor."""
        if self.batcher is None or self.latency is None:
            raise ValueError("start() needs a batcher and a latency model; use prepare() and serve()")
        self._serving.set()
        self.prepare(lambda: None)

    def stop(self, timeout_s: float | None = None) -> None:
        """Finish what is queued (the batcher is closed by the caller), then end the thread."""
        self._stop.set()
        self._serving.set()  # a thread still waiting for its queues ends at once
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def busy_ms(self) -> float:
        """Predicted remaining compute of the batch now running (0 when idle)."""
        busy = self._busy
        if busy is None:
            return 0.0
        start, predicted_s = busy
        return max(0.0, start + predicted_s - time.perf_counter()) * 1e3

    def _main(self, prepare) -> None:
        # Before warm-up: the intra-op threads torch starts from this thread take its name too.
        set_thread_name(WORKER_THREAD_NAME)
        try:
            self._prepare_result = (prepare(), None)
        except BaseException as exc:  # reported to whoever waits for readiness
            self._prepare_result = (None, exc)
            self._prepared.set()
            return
        self._prepared.set()
        self._serving.wait()
        if self.batcher is None:  # stopped before it was handed its queues
            return
        self._loop()

    def _loop(self) -> None:
        while True:
            try:
                batch = self.batcher.next_batch(timeout_s=0.1)
            except Exception:  # never expected; the loop must outlive it
                log.exception("batcher failed")
                continue
            if batch is None:
                if self._stop.is_set() and not any(self.batcher.snapshot().values()):
                    return
                self._maybe_probe()
                continue
            self._handle(batch)

    def _maybe_probe(self) -> None:
        """Time the probe input when idle for long enough (see `probe`); failures only log."""
        if self.probe is None or self._stop.is_set():
            return
        level, x, idle_s = self.probe
        start = time.perf_counter()
        if start - self._last_compute_s < idle_s:
            return
        self._busy = (start, self.latency.predict_ms(level, len(x)) / 1e3)  # a request arriving now waits for it
        try:
            self.runner.run(level, x)
        except Exception:
            log.exception("idle probe at level %s failed", level)
            return
        finally:
            self._busy = None
            self._last_compute_s = time.perf_counter()
        self.probes_run += 1
        self.latency.observe(level, len(x), (self._last_compute_s - start) * 1e3)

    def _handle(self, batch: Batch) -> None:
        for item in batch.expired:
            now = time.perf_counter()
            why = "deadline passed" if now >= item.deadline_s else "deadline cannot be met even in a batch of one"
            _deliver(item, Expired(f"{why} after {(now - item.enqueued_s) * 1e3:.0f} ms in the queue; not computed"))
        if not batch.items:
            return
        level, items = batch.level, batch.items
        start = time.perf_counter()
        self._busy = (start, self.latency.predict_ms(level, len(items)) / 1e3)
        queue_s = [start - it.enqueued_s for it in items]
        try:
            x = torch.stack([it.image for it in items])
            out = self.runner.run(level, x)
        except Exception as exc:  # the batch fails; its requests get 500, the thread lives on
            self._busy = None
            self.batches_failed += 1
            log.exception("batch of %d at level %s failed", len(items), level)
            error = InternalError(f"inference failed for this batch: {type(exc).__name__}: {exc}"[:300])
            for item in items:
                _deliver(item, error)
            return
        compute_s = time.perf_counter() - start
        self._busy = None
        self._last_compute_s = time.perf_counter()
        self.batches_run += 1
        self.latency.observe(level, len(items), compute_s * 1e3)
        if self.on_batch is not None:
            try:
                self.on_batch(level, len(items), compute_s, queue_s)
            except Exception:
                log.exception("batch metrics failed")
        for i, item in enumerate(items):
            _deliver(
                item,
                ItemResult(
                    probs=out.probs[i],
                    topk_values=out.topk_values[i],
                    topk_indices=out.topk_indices[i],
                    queue_s=queue_s[i],
                    compute_s=compute_s,
                    batch_size=len(items),
                ),
            )


def _deliver(item, result) -> None:
    try:
        item.on_done(result)
    except Exception:  # a closed loop or a cancelled request must not kill the worker
        log.exception("delivering a result failed")
