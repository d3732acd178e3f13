"""Levels: static token counts, analytic GFLOPs, names and ratios."""

from __future__ import annotations

import pytest
import timm
import torch

from models import DENSE, ReductionStep
from models.levels import model_gflops
from models.schedules import DEFAULT_TARGETS, FEW_POINT_RECIPES, level_name
from models.sparse_vit import SparseViT, vit_shape


def dense_gflops(name: str) -> float:
    with torch.device("meta"):  # shapes only: no weights allocated or initialised
        shape = vit_shape(timm.create_model(name, pretrained=False))
    n = shape.num_patches + shape.num_prefix_tokens
    return model_gflops(shape, (n,) * shape.depth, (n,) * shape.depth)


@pytest.mark.parametrize(
    "name, expected", [("deit_small_patch16_224", 4.6), ("deit_tiny_patch16_224", 1.3), ("deit_base_patch16_224", 17.6)]
)
def test_dense_gflops_match_the_papers(name, expected):
    assert dense_gflops(name) == pytest.approx(expected, abs=0.05)


def test_default_levels_are_named_ordered_and_under_their_targets(tiny_model):
    names = list(tiny_model.levels)
    targets = {level_name(t): t for t in DEFAULT_TARGETS} | {n: t for n, (t, _) in FEW_POINT_RECIPES.items()}
    assert sorted(names) == sorted([DENSE, *targets])
    ratios = [tiny_model.level(n).gflops_ratio for n in names]
    assert names[0] == DENSE and ratios[0] == 1.0
    assert ratios == sorted(ratios, reverse=True)
    for name, target in targets.items():
        lv = tiny_model.level(name)
        assert lv.gflops_ratio <= target + 1e-9
        # Not needlessly sparse either: within 5 points of the target.
        assert lv.gflops_ratio > target - 0.05


def test_tokens_per_block_follow_the_schedule(tiny_model):
    n0 = tiny_model.shape.num_patches + 1
    for lv in tiny_model.levels.values():
        assert len(lv.tokens_per_block) == tiny_model.shape.depth
        assert lv.tokens_per_block[0] == n0
        expected, n = [], n0
        steps = {s.block: s for s in lv.schedule}
        for i in range(tiny_model.shape.depth):
            expected.append(n)
            if i in steps:
                n = steps[i].keep
        assert list(lv.tokens_per_block) == expected


def test_unknown_level_names_the_known_ones(tiny_model):
    with pytest.raises(KeyError, match="l060"):
        tiny_model.level("l042")


def test_bad_schedules_are_refused(tiny_model):
    m = tiny_model.timm_model
    with pytest.raises(ValueError, match="keeps"):
        SparseViT(m, schedules={"x": (ReductionStep(1, "merge", 500),)})
    with pytest.raises(ValueError, match="two reduction steps"):
        SparseViT(m, schedules={"x": (ReductionStep(1, "merge", 150), ReductionStep(1, "prune", 100))})
    with pytest.raises(ValueError, match="unknown reducer"):
        SparseViT(m, schedules={"x": (ReductionStep(1, "drop", 150),)})


def test_as_dict_has_the_card_fields(tiny_model):
    d = tiny_model.level("l060").as_dict()
    assert set(d) == {"name", "reducer", "tokens_per_block", "gflops", "gflops_ratio"}
