"""Default level schedules (which reducer, where, how many tokens), chosen by measurement.

A *recipe* is a family of schedules with one strength knob (tokens removed per block); for a
GFLOPs target the strength is fitted so that the level is as dense as possible while its
analytic GFLOPs stay at or below the target. Recipes are written in fractions of depth, so
they apply to any ViT depth (the tiny test ViT, DeiT-T/S/B).

The recipe for each default target was picked on DeiT-Tiny with the real evaluation images
(agreement with dense first, top-1 second): see docs/accuracy.md, "schedules tried".
"""

from __future__ import annotations

from dataclasses import dataclass

from models.levels import ReductionStep, VitShape, model_gflops

# Target fractions of dense GFLOPs for the default levels.
DEFAULT_TARGETS = (0.9, 0.8, 0.7, 0.65, 0.6, 0.5, 0.4)


def level_name(target: float) -> str:
    return f"l{round(target * 100):03d}"


@dataclass(frozen=True)
class Recipe:
    """A schedule family: an optional one-off early reduction, then gradual reduction.

    Args:
        reducer: used at every block from `start` on.
        start: first gradual block, as a fraction of depth (0.17 of 12 blocks = block 2).
        profile: "constant": each gradual block removes `strength` tokens (ToMe's constant r;
            fractional strengths are spread by rounding the running total); "geometric": each
            removes the fraction `strength` of its patches, so late blocks never run dry.
        early: optional (reducer, block fraction, fraction of patches kept) applied once.
        early_fuse: for an early "prune": fuse the pruned patches into one token (EViT).
        final_prune: after the last block's attention only the class token feeds the head,
            so the last MLP can run on 2 tokens: exact, and cheaper.
        points: a few reduction points instead of gradual reduction (SaiT-style), as fractions
            of depth; at each, the fraction `strength` of the patches goes, by `reducer` (or by
            `point_reducers[i]`, where "prunef" is a prune with fusion). `start`, `profile`
            and `early` are then not read.
        point_reducers: one reducer per point (default: `reducer` at every point).
    """

    reducer: str = "merge"
    start: float = 0.17
    profile: str = "constant"
    early: tuple[str, float, float] | None = None
    early_fuse: bool = False
    final_prune: bool = True
    points: tuple[float, ...] = ()
    point_reducers: tuple[str, ...] = ()

    def __post_init__(self):
        if self.profile not in ("constant", "geometric"):
            raise ValueError(f"recipe profile must be constant or geometric, not {self.profile!r}")
        if self.point_reducers and len(self.point_reducers) != len(self.points):
            raise ValueError("a recipe needs one point reducer per point (or none)")

    def steps(self, shape: VitShape, strength: float) -> tuple[ReductionStep, ...]:
        if self.points:
            return self._point_steps(shape, strength)
        depth = shape.depth
        n = shape.num_patches + shape.num_prefix_tokens
        start = round(self.start * depth)
        early_block = None
        if self.early is not None:
            early_reducer, frac, keep_frac = self.early
            early_block = round(frac * depth)
        steps, removed = [], 0.0
        last = depth - 1 if self.final_prune else depth
        for block in range(last):
            if block == early_block:
                keep = round((n - 1) * keep_frac) + 1 + int(self.early_fuse)
                if keep < n:
                    steps.append(ReductionStep(block, early_reducer, keep, fuse=self.early_fuse))
                    n = keep
            elif block >= start:
                if self.profile == "geometric":
                    keep = max(3, round((n - 1) * (1.0 - strength)) + 1)
                else:
                    removed += strength
                    keep = max(3, n - round(removed))
                    removed -= n - keep
                if keep < n:
                    steps.append(ReductionStep(block, self.reducer, keep))
                    n = keep
        if self.final_prune:
            steps.append(ReductionStep(depth - 1, "prune", 2))
        return tuple(steps)

    def _point_steps(self, shape: VitShape, strength: float) -> tuple[ReductionStep, ...]:
        depth = shape.depth
        n = shape.num_patches + shape.num_prefix_tokens
        names = self.point_reducers or (self.reducer,) * len(self.points)
        steps, used = [], set()
        last = depth - 2 if self.final_prune else depth - 1  # the last block holds the exact trim
        for frac, name in sorted(zip(self.points, names)):
            block = min(round(frac * depth), last)
            if block in used:  # a shallow ViT: two points fall on one block
                continue
            fuse = name == "prunef"
            keep = max(3, round((n - 1) * (1.0 - strength)) + 1 + int(fuse))
            if keep < n:
                steps.append(ReductionStep(block, "prune" if fuse else name, keep, fuse=fuse))
                used.add(block)
                n = keep
        if self.final_prune:
            steps.append(ReductionStep(depth - 1, "prune", 2))
        return tuple(steps)


def gflops_ratio(shape: VitShape, steps: tuple[ReductionStep, ...] | list[ReductionStep]) -> float:
    """Analytic GFLOPs of a schedule divided by dense GFLOPs."""
    n0 = shape.num_patches + shape.num_prefix_tokens
    by_block = {s.block: s.keep for s in steps}
    attn, mlp, n = [], [], n0
    for i in range(shape.depth):
        attn.append(n)
        n = by_block.get(i, n)
        mlp.append(n)
    dense = model_gflops(shape, (n0,) * shape.depth, (n0,) * shape.depth)
    return model_gflops(shape, tuple(attn), tuple(mlp)) / dense


def fit(recipe: Recipe, shape: VitShape, target: float) -> tuple[ReductionStep, ...]:
    """The densest schedule of `recipe` whose GFLOPs ratio is at or below `target`."""
    lo, hi = 0.0, (0.99 if recipe.profile == "geometric" or recipe.points else float(shape.num_patches))
    best = None
    for _ in range(40):  # bisection on the strength; the ratio falls as strength grows
        mid = (lo + hi) / 2
        steps = recipe.steps(shape, mid)
        if gflops_ratio(shape, steps) <= target:
            best, hi = steps, mid
        else:
            lo = mid
    if best is None:
        raise ValueError(f"recipe {recipe} cannot reach {target:.2f} of dense GFLOPs")
    return best


# Chosen by measurement on DeiT-Tiny (docs/accuracy.md).
# Chosen on DeiT-Tiny (docs/accuracy.md, "schedules tried"): ToMe merging that starts later
# the lighter the level (early blocks' keys are not yet semantic); a geometric profile from
# 0.7x down, so the last blocks never run dry; at 0.5x a fused EViT prune takes the first cut.
DEFAULT_RECIPES: dict[float, Recipe] = {
    0.9: Recipe(reducer="merge", start=6 / 12),
    0.8: Recipe(reducer="merge", start=4 / 12),
    0.7: Recipe(reducer="merge", start=4 / 12, profile="geometric"),
    # 0.65: the training-free goal's level (<= 0.65x GFLOPs); measured -0.70 top-1, agreement 0.960.
    0.65: Recipe(reducer="merge", start=3 / 12, profile="geometric"),
    0.6: Recipe(reducer="merge", start=3 / 12, profile="geometric"),
    0.5: Recipe(reducer="merge", start=3 / 12, profile="geometric", early=("prune", 2 / 12, 0.85), early_fuse=True),
    # 0.4: the overload rung, the sparsest level, which the controller serves only when the
    # denser levels cannot keep up. Searched over early-prune block (1-3), kept fraction
    # (0.6-0.85) and plain geometric merging on 600 images: pruning after block 1 (keeping
    # 0.8, fused) then geometric merging lost least (-5.8 top-1, agreement 0.805); at 0.35x
    # the best lost 13 points, so no sparser level is offered.
    0.4: Recipe(reducer="merge", start=2 / 12, profile="geometric", early=("prune", 1 / 12, 0.8), early_fuse=True),
}


# Levels with a few reduction points (issue 18), beside the gradual ones: each reduction point
# is a chain of operators (about 15 for a merge: models.op_count), and on a GPU that chain
# costs more than the work it saves until the model is large, so a level that reduces at two
# or three blocks can be the faster one there. Which levels a device is offered is decided by
# its measured speed (models.card.choose_levels). Chosen by `python -m models.schedule_search`
# on 600 images (docs/accuracy.md, "A few reduction points"): "f" = few points (merging, with
# a fused prune first below 0.5x), "p" = prune only (SaiT/EViT-style: gathers only, no token
# sizes, so attention keeps its fastest kernel).
FEW_POINT_RECIPES: dict[str, tuple[float, Recipe]] = {
    "f080": (0.8, Recipe(reducer="merge", points=(5 / 12, 8 / 12))),
    "p080": (0.8, Recipe(reducer="prune", points=(4 / 12, 7 / 12, 10 / 12))),
    "f065": (0.65, Recipe(reducer="merge", points=(4 / 12, 8 / 12))),
    "f050": (0.5, Recipe(points=(2 / 12, 5 / 12, 8 / 12), point_reducers=("prunef", "merge", "merge"))),
    "f040": (0.4, Recipe(points=(1 / 12, 4 / 12, 7 / 12), point_reducers=("prunef", "merge", "merge"))),
}


def default_schedules(shape: VitShape) -> dict[str, tuple[ReductionStep, ...]]:
    """Every default level's schedule, densest first (by GFLOPs; the gradual level first on a tie)."""
    levels = {level_name(t): fit(r, shape, t) for t, r in DEFAULT_RECIPES.items()}
    levels |= {name: fit(r, shape, t) for name, (t, r) in FEW_POINT_RECIPES.items()}
    return dict(sorted(levels.items(), key=lambda kv: -round(gflops_ratio(shape, kv[1]), 4)))
