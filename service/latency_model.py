"""Compute time per (level, batch size): profiled at start-up, corrected online.

The profile measures each level at power-of-two batch sizes (and the max) before readiness;
other sizes are interpolated linearly (past the last point, extrapolated per image). Online,
every measured batch nudges one scale by an exponentially weighted moving average of
measured / profiled time. The scale is shared by all levels: what makes a machine slower
than at start-up (a neighbour on the CPU, a load generator, thermal limits) slows every
level and batch size alike, and a level that ran rarely must not keep a stale estimate.
"""
from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterable

import torch
from tqdm import tqdm

# Outliers (a GC pause, a page fault storm) must not swing the model: one batch can move the
# scale by at most this factor's worth of EWMA weight.
_RATIO_CLAMP = (0.25, 4.0)


def profile_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to and including max_batch_size."""
    sizes, b = [], 1
    while b < max_batch_size:
        sizes.append(b)
        b *= 2
    sizes.append(max_batch_size)
    return tuple(sizes)


class LatencyModel:
    """Predicted compute milliseconds for a batch of `b` images at a level.

    Args:
        profile_ms: level -> {batch size: measured ms}; at least one point per level.
        max_batch_size: the largest batch the batcher forms.
        alpha: EWMA weight of one new measurement in the per-level scale.
    """

    def __init__(self, *, profile_ms: dict[str, dict[int, float]], max_batch_size: int, alpha: float = 0.1):
        if not profile_ms:
            raise ValueError("latency model needs at least one level")
        self.max_batch_size = max_batch_size
        self.alpha = alpha
        self._base = {level: _interpolate(points, max_batch_size) for level, points in profile_ms.items()}
        self._scale = 1.0
        self._lock = threading.Lock()

    @property
    def levels(self) -> tuple[str, ...]:
        return tuple(self._base)

    def predict_ms(self, level: str, batch_size: int) -> float:
        """Compute time of one batch; sizes above the max are split into max-size batches."""
        if batch_size <= 0:
            return 0.0
        full, rest = divmod(batch_size, self.max_batch_size)
        base = self._base[level]
        ms = full * base[self.max_batch_size - 1] + (base[rest - 1] if rest else 0.0)
        return ms * self._scale

    def observe(self, level: str, batch_size: int, measured_ms: float) -> None:
        """Fold one measured batch into the shared scale (called by the worker thread)."""
        base = self._base[level][min(batch_size, self.max_batch_size) - 1]
        if base <= 0 or measured_ms <= 0:
            return
        ratio = min(max(measured_ms / base, _RATIO_CLAMP[0]), _RATIO_CLAMP[1])
        with self._lock:
            self._scale = (1 - self.alpha) * self._scale + self.alpha * ratio

    def scale(self) -> float:
        return self._scale

    def table_ms(self) -> dict[str, list[float]]:
        """Current prediction for every level and batch size 1..max (for logs and tests)."""
        return {level: [self.predict_ms(level, b) for b in range(1, self.max_batch_size + 1)] for level in self._base}


def _interpolate(points: dict[int, float], max_batch_size: int) -> list[float]:
    """Piecewise-linear ms for batch sizes 1..max from measured points."""
    pts = sorted((int(b), float(ms)) for b, ms in points.items() if b >= 1)
    if not pts:
        raise ValueError("no profile points")
    out = []
    for b in range(1, max_batch_size + 1):
        if b <= pts[0][0]:
            # Below the first point: proportional to the batch, never below a quarter of it
            # (a batch of one still pays the fixed per-launch cost).
            b0, ms0 = pts[0]
            out.append(ms0 * max(b / b0, 0.25))
            continue
        for (b0, ms0), (b1, ms1) in zip(pts, pts[1:]):
            if b0 <= b <= b1:
                out.append(ms0 + (ms1 - ms0) * (b - b0) / (b1 - b0))
                break
        else:
            b0, ms0 = pts[-1]
            per_image = ms0 / b0 if len(pts) == 1 else max((ms0 - pts[-2][1]) / (b0 - pts[-2][0]), 0.0)
            out.append(ms0 + per_image * (b - b0))
    return out


def profile_levels(
    run: Callable[[str, torch.Tensor], object],
    *,
    levels: Iterable[str],
    input_size: tuple[int, int, int],
    max_batch_size: int,
    repeats: int = 3,
    progress: bool = True,
) -> dict[str, dict[int, float]]:
    """Median wall time of `run(level, zeros[b,...])` for each level and profiled batch size."""
    levels = tuple(levels)
    sizes = profile_batch_sizes(max_batch_size)
    out: dict[str, dict[int, float]] = {level: {} for level in levels}
    jobs = [(level, b) for level in levels for b in sizes]
    for level, b in tqdm(jobs, desc="profiling levels", unit="shape", disable=None if progress else True, leave=False):
        x = torch.zeros((b, *input_size), dtype=torch.uint8)
        run(level, x)  # first call at a new shape pays allocator/kernel selection
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(level, x)
            times.append((time.perf_counter() - start) * 1e3)
        out[level][b] = statistics.median(times)
    return out
