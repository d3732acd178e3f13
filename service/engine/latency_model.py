"""Compute time per (level, batch size): profiled at start-up, corrected online.

The profile measures each level at the batch buckets (service.device.buckets: powers of two
and the max) before readiness, in interleaved rounds (every level and size once per round) so that a burst of noise on a
shared machine hits one sample of many shapes rather than every sample of one. Two facts
then clean it up (isotonic regression, pool-adjacent-violators): a sparser level does a
subset of a denser level's work, so it is never slower at the same batch size; and a larger
batch is never faster than a smaller one. A noisy profile otherwise makes a sparse level
look slower than dense, and the controller would avoid the very level that relieves load.
Other sizes are interpolated linearly (past the last point, extrapolated per image).

Online, every measured batch corrects the prediction twice, by exponentially weighted moving
averages of measured / predicted time: a scale shared by all levels (what makes the machine
slower than at start-up, a neighbour on the CPU, a load generator, slows every level alike,
and a level that ran rarely must not keep a stale estimate), and a slower per-level factor
(what the profile got wrong about one level).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterable

import torch
from tqdm import tqdm

from service.device.buckets import batch_buckets

# Outliers (a GC pause, a page fault storm) must not swing the model: one batch can move the
# scale by at most this factor's worth of EWMA weight.
_RATIO_CLAMP = (0.25, 4.0)
# A level's own correction stays within this band of the shared scale.
_FACTOR_CLAMP = (0.5, 2.0)


class LatencyModel:
    """Predicted compute milliseconds for a batch of `b` images at a level.

    Args:
        profile_ms: level -> {batch size: measured ms}; at least one point per level.
        max_batch_size: the largest batch the batcher forms.
        alpha: EWMA weight of one new measurement in the shared scale.
        level_alpha: EWMA weight of one new measurement in its level's own factor.
        order: level names densest first, for the "sparser is never slower" cleaning; None
            keeps the profile as measured.
    """

    def __init__(
        self,
        *,
        profile_ms: dict[str, dict[int, float]],
        max_batch_size: int,
        alpha: float = 0.3,
        level_alpha: float = 0.05,
        order: tuple[str, ...] | None = None,
    ):
        if not profile_ms:
            raise ValueError("latency model needs at least one level")
        self.max_batch_size = max_batch_size
        self.alpha = alpha
        self.level_alpha = level_alpha
        if order is not None:
            profile_ms = monotone_profile(profile_ms, order)
        self._base = {level: _interpolate(points, max_batch_size) for level, points in profile_ms.items()}
        self._scale = 1.0
        self._factor = {level: 1.0 for level in self._base}
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
        return ms * self._scale * self._factor[level]

    def per_image_ms(self, level: str) -> float:
        """Predicted compute per image in a full batch: the level's cost under sustained load."""
        return self.predict_ms(level, self.max_batch_size) / self.max_batch_size

    def observe(self, level: str, batch_size: int, measured_ms: float) -> None:
        """Fold one measured batch into the shared scale and the level's factor (worker thread)."""
        base = self._base[level][min(batch_size, self.max_batch_size) - 1]
        if base <= 0 or measured_ms <= 0:
            return
        ratio = min(max(measured_ms / base, _RATIO_CLAMP[0]), _RATIO_CLAMP[1])
        with self._lock:
            factor = self._factor[level]
            self._scale = (1 - self.alpha) * self._scale + self.alpha * ratio / factor
            factor = (1 - self.level_alpha) * factor + self.level_alpha * ratio / self._scale
            self._factor[level] = min(max(factor, _FACTOR_CLAMP[0]), _FACTOR_CLAMP[1])

    def scale(self) -> float:
        return self._scale

    def factor(self, level: str) -> float:
        return self._factor[level]

    def table_ms(self) -> dict[str, list[float]]:
        """Current prediction for every level and batch size 1..max (for logs and tests)."""
        return {level: [self.predict_ms(level, b) for b in range(1, self.max_batch_size + 1)] for level in self._base}


def monotone_profile(profile_ms: dict[str, dict[int, float]], order: tuple[str, ...]) -> dict[str, dict[int, float]]:
    """The profile cleaned by two orderings that hold for the true times.

    At each batch size, times are made non-increasing from the densest level (`order`) to the
    sparsest; then per level, non-decreasing in batch size. Both by isotonic regression
    (violating neighbours are replaced by their mean), so one noisy sample is averaged with
    its neighbours rather than trusted or thrown away.
    """
    ranked = [level for level in order if level in profile_ms] + [lv for lv in profile_ms if lv not in order]
    out = {level: dict(points) for level, points in profile_ms.items()}
    sizes = sorted({b for points in out.values() for b in points})
    for b in sizes:
        levels = [level for level in ranked if b in out[level]]
        fitted = _isotonic_non_increasing([out[level][b] for level in levels])
        for level, ms in zip(levels, fitted):
            out[level][b] = ms
    for level, points in out.items():
        bs = sorted(points)
        fitted = _isotonic_non_increasing([-points[b] for b in bs])
        out[level] = {b: -ms for b, ms in zip(bs, fitted)}
    return out


def _isotonic_non_increasing(values: list[float]) -> list[float]:
    """Least-squares non-increasing fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            m2, n2 = blocks.pop()
            m1, n1 = blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in blocks for _ in range(n)]


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
    """Median wall time of `run(level, zeros[b,...])` for each level and profiled batch size.

    Every shape runs once unmeasured (allocator and kernel selection), then `repeats`
    interleaved rounds measure each shape once per round.
    """
    levels = tuple(levels)
    sizes = batch_buckets(max_batch_size)
    jobs = [(level, b) for level in levels for b in sizes]
    inputs = {b: torch.zeros((b, *input_size), dtype=torch.uint8) for b in sizes}
    times: dict[tuple[str, int], list[float]] = {job: [] for job in jobs}
    rounds = [None] + list(range(repeats))
    bar = tqdm(
        total=len(jobs) * len(rounds),
        desc="profiling levels",
        unit="run",
        disable=None if progress else True,
        leave=False,
    )
    for r in rounds:
        for level, b in jobs:
            start = time.perf_counter()
            run(level, inputs[b])
            if r is not None:
                times[(level, b)].append((time.perf_counter() - start) * 1e3)
            bar.update()
    bar.close()
    out: dict[str, dict[int, float]] = {level: {} for level in levels}
    for (level, b), ts in times.items():
        out[level][b] = statistics.median(ts)
    return out
