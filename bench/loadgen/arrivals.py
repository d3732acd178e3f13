"""Open-loop arrival schedules: when each request is due, fixed before the run starts.

A rate profile is a list of segments, each a constant rate or a linear ramp. Arrival times are
drawn by mapping a unit-rate process through the inverse of the profile's cumulative intensity
Lambda(t) (the time-change theorem): unit spacing gives a constant-rate ("paced") schedule,
exponential unit spacing gives a non-homogeneous Poisson process with exactly that rate.
Everything here is pure and seeded, so schedules are reproducible and unit-testable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Process = Literal["poisson", "constant"]
PROCESSES: tuple[str, ...] = ("poisson", "constant")


class ProfileError(ValueError):
    """A rate profile that cannot be parsed or makes no sense (one readable line)."""


@dataclass(frozen=True)
class Segment:
    """A stretch of the run whose rate moves linearly from start_rps to end_rps.

    Args:
        duration_s: length of the segment in seconds (> 0).
        start_rps: offered rate at the start of the segment, requests per second (>= 0).
        end_rps: offered rate at the end; equal to start_rps for a constant rate.
    """

    duration_s: float
    start_rps: float
    end_rps: float

    def __post_init__(self) -> None:
        if not (self.duration_s > 0 and math.isfinite(self.duration_s)):
            raise ProfileError(f"segment duration must be > 0 s, got {self.duration_s}")
        for rate in (self.start_rps, self.end_rps):
            if not (rate >= 0 and math.isfinite(rate)):
                raise ProfileError(f"rates must be finite and >= 0, got {rate}")

    @property
    def slope(self) -> float:
        return (self.end_rps - self.start_rps) / self.duration_s

    @property
    def count(self) -> float:
        """Expected number of arrivals in the segment (its area under the rate)."""
        return 0.5 * (self.start_rps + self.end_rps) * self.duration_s

    def rate_at(self, t_s: float) -> float:
        return self.start_rps + self.slope * t_s

    def time_for_count(self, count: float) -> float:
        """Inverse of Lambda inside the segment: the time at which `count` arrivals are due.

        Solves r0*t + k*t^2/2 = count in the form 2c / (r0 + sqrt(r0^2 + 2kc)), which stays
        accurate when the slope k is zero or tiny and also for falling ramps.
        """
        r0, k = self.start_rps, self.slope
        disc = max(r0 * r0 + 2.0 * k * count, 0.0)
        denom = r0 + math.sqrt(disc)
        if denom <= 0.0:
            return self.duration_s
        return min(2.0 * count / denom, self.duration_s)


@dataclass(frozen=True)
class RateProfile:
    """Offered load over time: consecutive segments.

    Args:
        segments: the segments in order; at least one.
    """

    segments: tuple[Segment, ...]

    def __post_init__(self) -> None:
        if not self.segments:
            raise ProfileError("a rate profile needs at least one segment")

    @classmethod
    def constant(cls, rps: float, duration_s: float) -> RateProfile:
        return cls(segments=(Segment(duration_s, rps, rps),))

    @classmethod
    def ramp(cls, start_rps: float, end_rps: float, duration_s: float) -> RateProfile:
        return cls(segments=(Segment(duration_s, start_rps, end_rps),))

    @classmethod
    def steps(cls, rates_rps: list[float], step_s: float) -> RateProfile:
        return cls(segments=tuple(Segment(step_s, r, r) for r in rates_rps))

    @classmethod
    def parse(cls, spec: str) -> RateProfile:
        """Parse "RATE@SECONDS" or "START:END@SECONDS" segments joined by commas.

        Examples: "20@60" (20 rps for a minute), "5:50@120" (ramp), "10@30,20@30,40@30"
        (steps), "0:40@20,40@60" (ramp up, then hold).
        """
        segments = []
        for part in spec.replace(" ", "").split(","):
            rate, sep, seconds = part.partition("@")
            if not sep or not rate or not seconds:
                raise ProfileError(f"bad segment {part!r}: expected RATE@SECONDS or START:END@SECONDS")
            start, _, end = rate.partition(":")
            try:
                start_rps = float(start)
                end_rps = float(end) if end else start_rps
                duration_s = float(seconds.removesuffix("s"))
            except ValueError:
                raise ProfileError(f"bad segment {part!r}: rates and seconds must be numbers") from None
            segments.append(Segment(duration_s, start_rps, end_rps))
        return cls(segments=tuple(segments))

    @property
    def duration_s(self) -> float:
        return sum(s.duration_s for s in self.segments)

    @property
    def expected_count(self) -> float:
        return sum(s.count for s in self.segments)

    @property
    def peak_rps(self) -> float:
        return max(max(s.start_rps, s.end_rps) for s in self.segments)

    def rate_at(self, t_s: float) -> float:
        """Offered rate at time t_s (0 outside the profile)."""
        start = 0.0
        for seg in self.segments:
            if start <= t_s < start + seg.duration_s:
                return seg.rate_at(t_s - start)
            start += seg.duration_s
        return 0.0

    def time_for_count(self, count: float) -> float:
        """Inverse cumulative intensity Lambda^-1(count); the profile's end when beyond it."""
        start = 0.0
        for seg in self.segments:
            if count <= seg.count:
                return start + seg.time_for_count(count)
            count -= seg.count
            start += seg.duration_s
        return start

    def scaled(self, factor: float) -> RateProfile:
        """The same shape at `factor` times the rate (for load sweeps)."""
        return RateProfile(
            segments=tuple(Segment(s.duration_s, s.start_rps * factor, s.end_rps * factor) for s in self.segments)
        )


def arrival_times(
    profile: RateProfile,
    *,
    process: Process = "poisson",
    max_requests: int = 100_000,
    seed: int = 0,
) -> np.ndarray:
    """Scheduled send times in seconds from the start of the run, sorted, float64.

    Args:
        profile: the offered rate over time.
        process: "poisson" (exponential gaps) or "constant" (evenly paced at the current rate).
        max_requests: hard cap on the number of arrivals, whatever the profile says.
        seed: seed of the random generator (Poisson only).
    """
    if process not in PROCESSES:
        raise ProfileError(f"unknown arrival process {process!r}; known: {', '.join(PROCESSES)}")
    if max_requests < 0:
        raise ProfileError(f"max_requests must be >= 0, got {max_requests}")
    total = profile.expected_count
    if process == "constant":
        # Unit spacing, half a step in, so a ramp from 0 does not fire at t=0.
        units = np.arange(min(max_requests, int(math.floor(total + 0.5)))) + 0.5
    else:
        rng = np.random.default_rng(seed)
        # Enough draws to pass `total` with overwhelming probability (+12 sigma), then cut.
        draws = min(max_requests, int(total + 12.0 * math.sqrt(total) + 16))
        units = np.cumsum(rng.exponential(1.0, size=draws))
        units = units[units <= total]
    times = np.fromiter((profile.time_for_count(u) for u in units), dtype=np.float64, count=len(units))
    return times
