"""The inference worker: a failing batch fails only its own requests; idle probes keep the latency model current."""

from __future__ import annotations

import threading
import time

import torch

from service.device.runner import RunOutput
from service.engine.batcher import Batcher, WorkItem
from service.engine.latency_model import LatencyModel
from service.engine.worker import InferenceWorker, ItemResult
from service.errors import Expired, InternalError

IMG = torch.zeros(3, 224, 224, dtype=torch.uint8)


class FlakyRunner:
    """Fails every batch that holds a poisoned (all-255) image."""

    def __init__(self):
        self.calls = 0

    def run(self, level, x):
        self.calls += 1
        if bool((x == 255).all(dim=(1, 2, 3)).any()):
            raise RuntimeError("poisoned batch")
        n = x.shape[0]
        probs = torch.full((n, 10), 0.1)
        return RunOutput(probs=probs, topk_values=probs[:, :2], topk_indices=torch.zeros(n, 2, dtype=torch.int64))


def test_failing_batch_fails_only_its_requests_and_the_worker_lives_on():
    lm = LatencyModel(profile_ms={"dense": {1: 1.0}}, max_batch_size=2)
    b = Batcher(levels=("dense",), max_batch_size=2, max_queue_delay_ms=0, latency=lm)
    runner = FlakyRunner()
    worker = InferenceWorker(runner=runner, batcher=b, latency=lm)
    worker.start()
    out: list = []
    done = threading.Event()
    poisoned = WorkItem(
        image=torch.full((3, 224, 224), 255, dtype=torch.uint8),
        level="dense",
        deadline_s=time.perf_counter() + 10,
        on_done=lambda r: (out.append(("bad", r)), done.set()),
    )
    b.put([poisoned])
    assert done.wait(5)
    done.clear()
    b.put(
        [
            WorkItem(
                image=IMG,
                level="dense",
                deadline_s=time.perf_counter() + 10,
                on_done=lambda r: (out.append(("good", r)), done.set()),
            )
        ]
    )
    assert done.wait(5)
    b.put(
        [
            WorkItem(
                image=IMG, level="dense", deadline_s=time.perf_counter() - 1, on_done=lambda r: out.append(("late", r))
            )
        ]
    )
    deadline = time.monotonic() + 5
    while len(out) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    b.close()
    worker.stop(5)
    results = dict(out)
    assert isinstance(results["bad"], InternalError) and results["bad"].status == 500
    assert isinstance(results["good"], ItemResult) and results["good"].batch_size == 1
    assert isinstance(results["late"], Expired) and results["late"].status == 504
    assert runner.calls == 2  # the expired one was never computed
    assert worker.batches_failed == 1 and worker.batches_run == 1


class SlowRunner:
    """Takes `ms` per call, or raises when `fail` is set."""

    def __init__(self, ms: float, fail: bool = False):
        self.ms, self.fail, self.calls = ms, fail, []

    def run(self, level, x):
        self.calls.append((level, len(x)))
        if self.fail:
            raise RuntimeError("probe input refused")
        time.sleep(self.ms / 1e3)
        return RunOutput(
            probs=torch.zeros(len(x), 2),
            topk_values=torch.zeros(len(x), 1),
            topk_indices=torch.zeros(len(x), 1, dtype=torch.long),
        )


def idle_worker(runner, probe):
    lm = LatencyModel(profile_ms={"l040": {1: 5.0, 4: 10.0}}, max_batch_size=4)
    b = Batcher(levels=("l040",), max_batch_size=4, max_queue_delay_ms=0, latency=lm)
    worker = InferenceWorker(runner=runner, batcher=b, latency=lm, probe=probe)
    worker.start()
    return worker, b, lm


def test_an_idle_worker_keeps_the_latency_model_current():
    # The machine got 4x slower while nobody sent anything: the probe finds out before a burst does.
    runner = SlowRunner(ms=40.0)
    worker, b, lm = idle_worker(runner, ("l040", torch.zeros(4, 3, 8, 8, dtype=torch.uint8), 0.05))
    deadline = time.monotonic() + 5
    while worker.probes_run < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    b.close()
    worker.stop(5)
    assert worker.probes_run >= 3 and runner.calls[0] == ("l040", 4)
    assert lm.predict_ms("l040", 4) > 2 * 10.0  # was 10 ms; measured about 40
    assert worker.batches_run == 0  # probes are not batches (no metrics, no requests)


def test_no_probe_without_one_and_a_failing_probe_only_logs():
    runner = SlowRunner(ms=1.0)
    worker, b, lm = idle_worker(runner, None)
    time.sleep(0.3)
    b.close()
    worker.stop(5)
    assert runner.calls == [] and lm.scale() == 1.0
    broken = SlowRunner(ms=1.0, fail=True)
    worker, b, lm = idle_worker(broken, ("l040", torch.zeros(4, 3, 8, 8, dtype=torch.uint8), 0.05))
    deadline = time.monotonic() + 5
    while len(broken.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.alive and worker.probes_run == 0 and lm.scale() == 1.0
    b.close()
    worker.stop(5)
