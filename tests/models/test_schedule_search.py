"""The schedule families of the search fit their GFLOPs targets (shapes only, no images)."""

from __future__ import annotations

import pytest
import timm
import torch

from models.schedule_search import build, fit
from models.schedules import DEFAULT_RECIPES, gflops_ratio, level_name
from models.sparse_vit import SparseViT


@pytest.fixture(scope="module")
def deit_shape_model():
    with torch.device("meta"):
        return SparseViT(timm.create_model("deit_tiny_patch16_224", pretrained=False))


@pytest.mark.parametrize(
    "spec",
    [
        "merge:2+fp",
        "mergegeo:3+fp",
        "pitome",
        "mergedec",
        "evitf",
        "tps",
        "naive",
        "hyb:squeeze:2:0.85:merge+fp",
        "hybg:prunef:2:0.85:merge+fp",
    ],
)
@pytest.mark.parametrize("target", [0.76, 0.6])
def test_families_fit_the_target(deit_shape_model, spec, target):
    _strength, steps = fit(spec, target, deit_shape_model)
    ratio = gflops_ratio(deit_shape_model.shape, steps)
    assert target - 0.03 < ratio <= target
    SparseViT(deit_shape_model.timm_model, schedules={"x": steps})  # a valid level


def test_naive_baseline_is_one_prune_at_block_3(deit_shape_model):
    _, steps = fit("naive", 0.76, deit_shape_model)
    assert len(steps) == 1 and steps[0].block == 3 and steps[0].reducer == "prune" and not steps[0].fuse


def test_default_levels_are_search_schedules(deit_shape_model):
    """The committed recipes reproduce the searched schedules they were chosen from."""
    chosen = {
        0.9: "merge:6+fp",
        0.8: "merge:4+fp",
        0.7: "mergegeo:4+fp",
        0.65: "mergegeo:3+fp",
        0.6: "mergegeo:3+fp",
        0.5: "hybg:prunef:2:0.85:merge+fp",
        0.4: "hybg:prunef:1:0.8:merge+fp",
    }
    assert set(chosen) == set(DEFAULT_RECIPES)
    for target, spec in chosen.items():
        _, steps = fit(spec, target, deit_shape_model)
        level = deit_shape_model.level(level_name(target))
        searched = SparseViT(deit_shape_model.timm_model, schedules={"x": steps}).level("x")
        assert searched.tokens_per_block == level.tokens_per_block, target


def test_unknown_family():
    with pytest.raises(ValueError, match="unknown schedule"):
        build("shuffle:2", 3.0, 12, 197)
