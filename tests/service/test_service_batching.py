"""Batcher (EDF, max batch, max delay, slack, expiry), latency model, and the worker's fault isolation."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from service.batcher import Batcher, WorkItem
from service.errors import Expired, InternalError, Unavailable
from service.latency_model import LatencyModel, monotone_profile, profile_batch_sizes
from service.runner import RunOutput
from service.worker import InferenceWorker, ItemResult

IMG = torch.zeros(3, 224, 224, dtype=torch.uint8)


def item(level: str, deadline_s: float, results: list, tag=None, priority: int = 0) -> WorkItem:
    return WorkItem(image=IMG, level=level, deadline_s=deadline_s, priority=priority,
                    on_done=lambda r, tag=tag: results.append((tag, r)))


def test_batches_earliest_deadline_first_up_to_max():
    b = Batcher(levels=("dense", "l050"), max_batch_size=2, max_queue_delay_ms=0)
    now = time.perf_counter()
    out = []
    b.put([item("dense", now + 9, out, "d9"), item("l050", now + 5, out, "s5"), item("dense", now + 3, out, "d3"),
           item("dense", now + 4, out, "d4"), item("l050", now + 8, out, "s8")])
    first = b.next_batch(timeout_s=1)
    assert first.level == "dense" and [i.on_done.__defaults__[0] for i in first.items] == ["d3", "d4"]
    second = b.next_batch(timeout_s=1)
    assert second.level == "l050" and len(second.items) == 2  # s5 is now the most urgent
    third = b.next_batch(timeout_s=1)
    assert third.level == "dense" and len(third.items) == 1
    assert b.next_batch(timeout_s=0.05) is None


def test_priority_breaks_ties_between_equal_deadlines():
    b = Batcher(levels=("dense",), max_batch_size=1, max_queue_delay_ms=0)
    d = time.perf_counter() + 5
    out = []
    b.put([item("dense", d, out, "default"), item("dense", d, out, "p2", priority=2), item("dense", d, out, "p1", priority=1)])
    order = [b.next_batch(timeout_s=1).items[0].on_done.__defaults__[0] for _ in range(3)]
    assert order == ["p1", "p2", "default"]


def test_waits_at_most_the_queue_delay_for_a_fuller_batch():
    b = Batcher(levels=("dense",), max_batch_size=4, max_queue_delay_ms=150)
    out = []
    start = time.perf_counter()
    b.put([item("dense", start + 10, out)])
    threading.Timer(0.05, lambda: b.put([item("dense", start + 10, out)])).start()
    batch = b.next_batch(timeout_s=2)
    waited = time.perf_counter() - start
    assert len(batch.items) == 2  # the late one joined
    assert 0.1 <= waited < 0.6


def test_never_waits_past_a_requests_slack():
    class Slow:
        def predict_ms(self, level, n):
            return 80.0

    b = Batcher(levels=("dense",), max_batch_size=4, max_queue_delay_ms=1000, latency=Slow())
    start = time.perf_counter()
    b.put([item("dense", start + 0.2, [])])  # must start by 0.2 - 0.08 = 0.12 s
    batch = b.next_batch(timeout_s=2)
    assert len(batch.items) == 1 and time.perf_counter() - start < 0.3


def test_expired_items_are_handed_back_without_compute():
    b = Batcher(levels=("dense",), max_batch_size=4, max_queue_delay_ms=0)
    now = time.perf_counter()
    out = []
    b.put([item("dense", now - 0.001, out, "late"), item("dense", now + 10, out, "ok")])
    batch = b.next_batch(timeout_s=1)
    assert batch.level is None and [i.on_done.__defaults__[0] for i in batch.expired] == ["late"]
    assert [i.on_done.__defaults__[0] for i in b.next_batch(timeout_s=1).items] == ["ok"]


def test_closed_batcher_refuses_new_work_but_hands_out_queued():
    b = Batcher(levels=("dense",), max_batch_size=4, max_queue_delay_ms=500)
    b.put([item("dense", time.perf_counter() + 10, [])])
    b.close()
    with pytest.raises(Unavailable):
        b.put([item("dense", time.perf_counter() + 10, [])])
    assert len(b.next_batch(timeout_s=1).items) == 1  # no waiting to fill once closed
    assert b.next_batch(timeout_s=1) is None


def test_latency_model_interpolates_and_corrects_online():
    lm = LatencyModel(profile_ms={"dense": {1: 10.0, 2: 14.0, 4: 22.0, 8: 38.0}}, max_batch_size=8, alpha=0.5,
                      level_alpha=0.0)
    assert [round(lm.predict_ms("dense", b), 3) for b in (1, 2, 3, 4, 6, 8)] == [10, 14, 18, 22, 30, 38]
    assert lm.predict_ms("dense", 12) == pytest.approx(38 + 22)  # a full batch, then 4
    lm.observe("dense", 4, 44.0)  # twice as slow -> scale 1.5 after one EWMA step
    assert lm.scale() == pytest.approx(1.5)
    assert lm.predict_ms("dense", 8) == pytest.approx(57.0)  # every size moves
    lm.observe("dense", 4, 1e6)  # an outlier is clamped
    assert lm.scale() <= 0.5 * 1.5 + 0.5 * 4.0 + 1e-9


def test_scale_is_shared_by_all_levels():
    lm = LatencyModel(profile_ms={"dense": {1: 10.0}, "l050": {1: 5.0}}, max_batch_size=1, alpha=1.0)
    lm.observe("dense", 1, 20.0)
    assert lm.predict_ms("l050", 1) == pytest.approx(10.0)


def test_level_factor_learns_what_the_profile_got_wrong_about_one_level():
    lm = LatencyModel(profile_ms={"dense": {1: 10.0}, "l050": {1: 5.0}}, max_batch_size=1, alpha=0.2, level_alpha=0.2)
    for _ in range(200):  # l050 really takes 8 ms, dense really takes its profiled 10 ms
        lm.observe("l050", 1, 8.0)
        lm.observe("dense", 1, 10.0)
    assert lm.predict_ms("l050", 1) == pytest.approx(8.0, rel=0.05)
    assert lm.predict_ms("dense", 1) == pytest.approx(10.0, rel=0.05)
    assert lm.factor("l050") > lm.factor("dense")


def test_monotone_profile_averages_away_a_noisy_sample():
    noisy = {"dense": {1: 40.0, 4: 80.0, 8: 150.0},
             "l070": {1: 30.0, 4: 70.0, 8: 200.0},   # b8 noisy: slower than dense
             "l050": {1: 60.0, 4: 50.0, 8: 100.0}}   # b1 noisy: slower than dense and than its own b4
    clean = monotone_profile(noisy, ("dense", "l070", "l050"))
    for b in (1, 4, 8):
        assert clean["dense"][b] >= clean["l070"][b] >= clean["l050"][b]
    for points in clean.values():
        assert points[1] <= points[4] <= points[8]
    assert clean["dense"][8] == clean["l070"][8] == pytest.approx(175.0)  # the violators' mean
    assert clean["dense"][4] == 80.0  # samples that violate nothing are kept
    lm = LatencyModel(profile_ms=noisy, max_batch_size=8, order=("dense", "l070", "l050"))
    assert lm.predict_ms("l050", 8) < lm.predict_ms("dense", 8)


def test_late_arrivals_do_not_grow_a_batch_past_its_deadline():
    class PerImage:
        def predict_ms(self, level, n):
            return 100.0 * n

    b = Batcher(levels=("dense", "l050"), max_batch_size=8, max_queue_delay_ms=0, latency=PerImage())
    now = time.perf_counter()
    out = []
    b.put([item("dense", now + 0.25, out)] + [item("dense", now + 5, out) for _ in range(5)])
    assert len(b.next_batch(timeout_s=1).items) == 2  # 2 x 100 ms fits the 250 ms head, 3 would not
    # Another level's most urgent image needs 100 ms of its own before its deadline.
    b = Batcher(levels=("dense", "l050"), max_batch_size=8, max_queue_delay_ms=0, latency=PerImage())
    now = time.perf_counter()
    b.put([item("dense", now + 0.6, out)] + [item("dense", now + 5, out) for _ in range(7)]
          + [item("l050", now + 0.65, out)])
    batch = b.next_batch(timeout_s=1)
    assert batch.level == "dense" and len(batch.items) == 5  # 6 would fit dense's 600 ms, not l050's 550


def test_profile_batch_sizes():
    assert profile_batch_sizes(1) == (1,)
    assert profile_batch_sizes(8) == (1, 2, 4, 8)
    assert profile_batch_sizes(12) == (1, 2, 4, 8, 12)


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
    poisoned = WorkItem(image=torch.full((3, 224, 224), 255, dtype=torch.uint8), level="dense",
                        deadline_s=time.perf_counter() + 10, on_done=lambda r: (out.append(("bad", r)), done.set()))
    b.put([poisoned])
    assert done.wait(5)
    done.clear()
    b.put([WorkItem(image=IMG, level="dense", deadline_s=time.perf_counter() + 10,
                    on_done=lambda r: (out.append(("good", r)), done.set()))])
    assert done.wait(5)
    b.put([WorkItem(image=IMG, level="dense", deadline_s=time.perf_counter() - 1, on_done=lambda r: out.append(("late", r)))])
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
        return RunOutput(probs=torch.zeros(len(x), 2), topk_values=torch.zeros(len(x), 1),
                         topk_indices=torch.zeros(len(x), 1, dtype=torch.long))


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


def test_late_arrivals_do_not_spend_the_safety_margin():
    class PerImage:
        def predict_ms(self, level, n):
            return 100.0 * n

    def batch_size(finish_in_s: float, deadline_in_s: float) -> int:
        b = Batcher(levels=("dense",), max_batch_size=8, max_queue_delay_ms=0, latency=PerImage())
        now = time.perf_counter()
        head = item("dense", now + deadline_in_s, [])
        head.finish_by_s = now + finish_in_s
        b.put([head] + [item("dense", now + 5, []) for _ in range(7)])
        return len(b.next_batch(timeout_s=1).items)

    # 3 x 100 ms ends before the head's finish-by (350 ms); 5 would fit its deadline (550 ms),
    # leaving nothing for a batch that runs slower than predicted.
    assert batch_size(0.35, 0.55) == 3
    # Once not even a batch of one can keep the margin, the deadline bounds the batch.
    assert batch_size(0.05, 0.45) == 4
    assert batch_size(0.55, 0.55) == 5  # no margin asked for: the deadline, as before


def test_an_image_that_cannot_make_its_deadline_even_alone_is_expired_not_computed():
    class PerImage:
        def predict_ms(self, level, n):
            return 100.0 * n

    b = Batcher(levels=("dense",), max_batch_size=8, max_queue_delay_ms=0, latency=PerImage())
    now = time.perf_counter()
    out: list = []
    doomed, fine = item("dense", now + 0.05, out), item("dense", now + 5, out)
    b.put([doomed, fine])
    first = b.next_batch(timeout_s=1)
    assert first.items == [] and first.expired == [doomed]  # 50 ms left, 100 ms needed
    assert b.next_batch(timeout_s=1).items == [fine]
