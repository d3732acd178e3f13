"""The batcher: per-level queues, earliest deadline first, batches bounded by the deadlines they delay."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from service.engine.batcher import Batcher, WorkItem
from service.errors import Unavailable

IMG = torch.zeros(3, 224, 224, dtype=torch.uint8)


def item(level: str, deadline_s: float, results: list, tag=None, priority: int = 0) -> WorkItem:
    return WorkItem(
        image=IMG,
        level=level,
        deadline_s=deadline_s,
        priority=priority,
        on_done=lambda r, tag=tag: results.append((tag, r)),
    )


def test_batches_earliest_deadline_first_up_to_max():
    b = Batcher(levels=("dense", "l050"), max_batch_size=2, max_queue_delay_ms=0)
    now = time.perf_counter()
    out = []
    b.put(
        [
            item("dense", now + 9, out, "d9"),
            item("l050", now + 5, out, "s5"),
            item("dense", now + 3, out, "d3"),
            item("dense", now + 4, out, "d4"),
            item("l050", now + 8, out, "s8"),
        ]
    )
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
    b.put(
        [
            item("dense", d, out, "default"),
            item("dense", d, out, "p2", priority=2),
            item("dense", d, out, "p1", priority=1),
        ]
    )
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
    b.put(
        [item("dense", now + 0.6, out)]
        + [item("dense", now + 5, out) for _ in range(7)]
        + [item("l050", now + 0.65, out)]
    )
    batch = b.next_batch(timeout_s=1)
    assert batch.level == "dense" and len(batch.items) == 5  # 6 would fit dense's 600 ms, not l050's 550


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
