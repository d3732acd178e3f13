"""Wall-clock timing of device work: synchronized, warmed up, bounded in count and time."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    """Seconds per call over the timed calls (warm-up calls excluded)."""

    samples_s: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)

    @property
    def mean_s(self) -> float:
        return statistics.fmean(self.samples_s)

    def percentile_s(self, q: float) -> float:
        """q in [0, 100], nearest-rank on the sorted samples."""
        xs = sorted(self.samples_s)
        rank = max(0, min(len(xs) - 1, round(q / 100 * (len(xs) - 1))))
        return xs[rank]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], object],
    *,
    device: torch.device,
    warmup: int = 2,
    min_calls: int = 3,
    max_calls: int = 200,
    min_time_s: float = 1.0,
) -> Timing:
    """Time `fn` call by call until both min_calls and min_time_s are reached (max_calls caps).

    Each call is synchronized, so a sample is the latency of one call; for the runner this
    matches serving, where every batch ends with a device->host copy.
    """
    if min_calls < 1 or max_calls < min_calls:
        raise ValueError("need 1 <= min_calls <= max_calls")
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_calls and (len(samples) < min_calls or time.perf_counter() - start < min_time_s):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - t0)
    return Timing(tuple(samples))
