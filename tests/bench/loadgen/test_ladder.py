"""The rate ladder: brackets the highest passing rate in few points, always bounded."""

from __future__ import annotations

import math

import pytest

from bench.loadgen.ladder import Point, climb, highest_passing, lowest_failing_above, next_rate, point_passes


def _fake(capacity_rps: float, seen: list[float]):
    def measure(rate_rps: float) -> Point:
        seen.append(rate_rps)
        return Point(rate_rps, rate_rps <= capacity_rps, {"why": "" if rate_rps <= capacity_rps else "p99"})

    return measure


@pytest.mark.parametrize("start", [100.0, 437.0, 3000.0])
def test_the_ladder_brackets_the_capacity_within_its_resolution(start):
    seen: list[float] = []
    points = climb(_fake(437.0, seen), start_rps=start, step=1.5, resolution=1.1, max_points=12)
    best = highest_passing(points)
    above = lowest_failing_above(points, best.rate_rps)
    assert best.rate_rps <= 437.0 < above.rate_rps <= 1.1 * best.rate_rps
    assert [p.rate_rps for p in points] == seen and len(points) < 12  # stopped by the resolution


def test_the_ladder_steps_up_then_bisects_and_is_bounded():
    seen: list[float] = []
    climb(_fake(437.0, seen), start_rps=100.0, step=2.0, resolution=1.01, max_points=5)
    assert seen[:4] == [100.0, 200.0, 400.0, 800.0] and seen[4] == pytest.approx(math.sqrt(400 * 800))
    assert len(climb(_fake(1e9, []), start_rps=1.0, max_points=3)) == 3  # never fails: still bounded
    points = climb(_fake(0.0, []), start_rps=8.0, step=2.0, max_points=4)  # never passes: steps down
    assert [p.rate_rps for p in points] == [8.0, 4.0, 2.0, 1.0] and highest_passing(points) is None
    with pytest.raises(ValueError):
        climb(_fake(1.0, []), start_rps=0.0)


def test_a_noisy_failure_below_the_best_does_not_bound_it():
    points = [Point(100, True), Point(150, False), Point(122, True), Point(90, False)]
    assert next_rate(points, step=1.5, resolution=1.1) == pytest.approx(math.sqrt(122 * 150))
    assert highest_passing(points).rate_rps == 122 and lowest_failing_above(points, 122).rate_rps == 150


def _summary(**kw) -> dict:
    base = dict(requests=100, ok=100, shed=0, expired=0, bad_request=0, error=0, timeout=0, unsent=0, p99_ms=40.0)
    return {**base, **kw}


def test_a_point_passes_only_fully_answered_and_within_the_bound():
    assert point_passes(_summary(), p99_bound_ms=50) == (True, "")
    assert point_passes(_summary(p99_ms=60.0), p99_bound_ms=50) == (False, "p99 60 ms > 50 ms")
    assert point_passes(_summary(ok=98, shed=1, unsent=1), p99_bound_ms=50) == (
        False,
        "not all answered: shed 1, unsent 1",
    )
    assert not point_passes(_summary(p99_ms=math.nan), p99_bound_ms=50)[0]
    assert point_passes(_summary(requests=0, ok=0), p99_bound_ms=50) == (False, "no requests scheduled")
