"""The highest offered rate a server keeps within a latency bound: a short ladder of points.

Each point is one open-loop run at a constant rate; it passes when every request was
answered OK and the p99 latency (from the scheduled send) is within the bound. The ladder
starts at a given rate and multiplies it by `step` while points pass (divides while they
fail), and once it has a passing rate below a failing one it tries their geometric mean,
until the two are within `resolution` of each other or `max_points` points were run.
Pure: `measure` runs a point; tests pass a fake one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Point:
    """One constant-rate run of the ladder.

    Args:
        rate_rps: offered rate.
        passed: all answered OK and p99 within the bound.
        info: what the run measured (a load-run summary, trimmed by the caller).
    """

    rate_rps: float
    passed: bool
    info: dict = field(default_factory=dict)


def point_passes(summary: dict, *, p99_bound_ms: float) -> tuple[bool, str]:
    """(passed, why not) for a load-run summary (bench.loadgen.report.summarize)."""
    n, ok = summary["requests"], summary["ok"]
    if n == 0:
        return False, "no requests scheduled"
    if ok < n:
        missing = {
            k: summary[k] for k in ("shed", "expired", "bad_request", "error", "timeout", "unsent") if summary[k]
        }
        return False, "not all answered: " + ", ".join(f"{k} {v}" for k, v in missing.items())
    p99 = summary["p99_ms"]
    if not p99 <= p99_bound_ms:
        return False, f"p99 {p99:.0f} ms > {p99_bound_ms:g} ms"
    return True, ""


def next_rate(points: list[Point], *, step: float, resolution: float) -> float | None:
    """The next rate to try, or None when the bracket is narrow enough."""
    best = max((p.rate_rps for p in points if p.passed), default=None)
    above = [p.rate_rps for p in points if not p.passed and (best is None or p.rate_rps > best)]
    lowest_fail = min(above, default=None)
    if lowest_fail is None:
        return best * step  # nothing failed yet: step up
    if best is None:
        return lowest_fail / step  # nothing passed yet: step down
    if lowest_fail / best <= resolution:
        return None
    return math.sqrt(best * lowest_fail)


def climb(
    measure: Callable[[float], Point],
    *,
    start_rps: float,
    step: float = 1.5,
    resolution: float = 1.1,
    max_points: int = 8,
) -> list[Point]:
    """Run the ladder; every point in the order run.

    Args:
        measure: runs one point at a rate.
        start_rps: the first rate (> 0).
        step: factor between rates while no bracket is found (> 1).
        resolution: stop when the lowest failing rate is within this factor of the highest
            passing one (> 1).
        max_points: points at most (>= 1).
    """
    if not (start_rps > 0 and step > 1 and resolution > 1 and max_points >= 1):
        raise ValueError("need start_rps > 0, step > 1, resolution > 1, max_points >= 1")
    points = [measure(start_rps)]
    while len(points) < max_points:
        rate = next_rate(points, step=step, resolution=resolution)
        if rate is None:
            break
        points.append(measure(rate))
    return points


def highest_passing(points: list[Point]) -> Point | None:
    return max((p for p in points if p.passed), key=lambda p: p.rate_rps, default=None)


def lowest_failing_above(points: list[Point], rate_rps: float) -> Point | None:
    """The first rate found too high above `rate_rps` (what bounds the figure from above)."""
    return min((p for p in points if not p.passed and p.rate_rps > rate_rps), key=lambda p: p.rate_rps, default=None)
