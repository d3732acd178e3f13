"""Default level schedules (which reducer, where, how many tokens), chosen by measurement."""
from __future__ import annotations

from models.levels import ReductionStep, VitShape, model_gflops

# Target fractions of dense GFLOPs for the default levels.
DEFAULT_TARGETS = (0.9, 0.8, 0.7, 0.6, 0.5)


def level_name(target: float) -> str:
    return f"l{round(target * 100):03d}"


def _ratio(shape: VitShape, steps: list[ReductionStep]) -> float:
    n0 = shape.num_patches + shape.num_prefix_tokens
    by_block = {s.block: s.keep for s in steps}
    attn, mlp, n = [], [], n0
    for i in range(shape.depth):
        attn.append(n)
        n = by_block.get(i, n)
        mlp.append(n)
    dense = model_gflops(shape, (n0,) * shape.depth, (n0,) * shape.depth)
    return model_gflops(shape, tuple(attn), tuple(mlp)) / dense


def geometric_schedule(shape: VitShape, target: float, *, reducer: str, blocks: list[int]) -> tuple[ReductionStep, ...]:
    """Keep the same fraction of tokens at each of `blocks`; the largest fraction under target."""
    n0 = shape.num_patches + shape.num_prefix_tokens
    lo, hi = 0.0, 1.0
    best: list[ReductionStep] = []
    for _ in range(40):
        rate = (lo + hi) / 2
        steps, n = [], n0
        for b in blocks:
            n = max(2, int(round((n - 1) * rate)) + 1)
            steps.append(ReductionStep(block=b, reducer=reducer, keep=n))
        if _ratio(shape, steps) <= target:
            lo, best = rate, steps
        else:
            hi = rate
    if not best:
        raise ValueError(f"no {reducer} schedule at blocks {blocks} reaches {target:.2f} of dense GFLOPs")
    return tuple(best)


def default_schedules(shape: VitShape) -> dict[str, tuple[ReductionStep, ...]]:
    d = shape.depth
    blocks = sorted({max(1, d // 4), d // 2, (3 * d) // 4})
    return {level_name(t): geometric_schedule(shape, t, reducer="prune", blocks=blocks) for t in DEFAULT_TARGETS}
