"""service.engine.timeline: the ring of per-second samples, on a fake clock."""

from __future__ import annotations

import pytest

from service.engine.timeline import Timeline


class FakeClock:
    def __init__(self, now_s: float = 1_000.0):
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def ring(start_s: float, window_s: int = 60) -> tuple[FakeClock, Timeline]:
    clock = FakeClock(start_s)
    return clock, Timeline(window_s=window_s, clock=clock)


def test_one_second_counts_arrivals_outcomes_and_the_deepest_queue():
    clock, tl = ring(1_000.2, window_s=10)
    tl.arrival(1, queued=3)
    tl.arrival(4, queued=9)
    tl.arrival(1, queued=2)
    tl.finished(level="dense", outcome="ok", deadline_met=True)
    tl.finished(level="l050", outcome="ok", deadline_met=False)
    tl.finished(level="l050", outcome="ok", deadline_met=True)
    tl.finished(level=None, outcome="shed", deadline_met=None)
    tl.finished(level="l050", outcome="expired", deadline_met=False)
    tl.finished(level=None, outcome="bad_request", deadline_met=None)
    tl.finished(level="dense", outcome="error", deadline_met=None)
    clock.now_s = 1_000.9
    [sample] = tl.samples()
    assert sample == {
        "t_s": 1000,
        "arrived": 3,
        "arrived_images": 6,
        "served": {"dense": 1, "l050": 2},
        "met": 2,
        "missed": 2,  # the late answer and the expired one
        "shed": 1,
        "expired": 1,
        "bad_request": 1,
        "error": 1,
        "queue_max": 9,
    }


def test_quiet_seconds_are_zeros_and_the_ring_keeps_only_its_window():
    clock, tl = ring(100.0, window_s=5)
    tl.arrival(1, queued=0)
    clock.now_s = 103.5
    tl.arrival(2, queued=1)
    samples = tl.samples()
    assert [s["t_s"] for s in samples] == [100, 101, 102, 103]
    assert [s["arrived_images"] for s in samples] == [1, 0, 0, 2]
    clock.now_s = 107.0  # 100..102 fall out of a 5-second window
    assert [s["t_s"] for s in tl.samples()] == [103, 104, 105, 106, 107]
    clock.now_s = 1_000.0  # a gap longer than the ring: only the last window's seconds, all zeros
    samples = tl.samples()
    assert [s["t_s"] for s in samples] == [996, 997, 998, 999, 1000]
    assert all(s["arrived"] == 0 and s["served"] == {} for s in samples)


def test_since_returns_the_newer_seconds_and_the_current_one_again():
    clock, tl = ring(10.0, window_s=60)
    for t in range(10, 16):
        clock.now_s = t + 0.5
        tl.arrival(1, queued=0)
    assert [s["t_s"] for s in tl.samples(since_s=13)] == [13, 14, 15]
    tl.arrival(1, queued=0)  # the current second grows; a reader asking from it sees it complete
    assert tl.samples(since_s=15)[0]["arrived"] == 2
    assert tl.samples(since_s=16) == []


def test_the_queue_now_counts_into_the_current_second_when_read():
    clock, tl = ring(50.0, window_s=60)
    tl.arrival(1, queued=2)
    clock.now_s = 52.0  # no arrivals while the queue drains: the reader's sample still shows it
    assert [s["queue_max"] for s in tl.samples(queued=5)] == [2, 0, 5]


def test_a_wall_clock_step_back_counts_into_the_newest_second():
    clock, tl = ring(200.0, window_s=60)
    tl.arrival(1, queued=0)
    clock.now_s = 150.0
    tl.arrival(1, queued=0)
    assert [(s["t_s"], s["arrived"]) for s in tl.samples()] == [(200, 2)]


def test_window_must_hold_a_second():
    with pytest.raises(ValueError):
        Timeline(window_s=0)
