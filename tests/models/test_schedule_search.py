"""The schedule families of the search fit their GFLOPs targets (shapes only, no images)."""

from __future__ import annotations

import pytest
import timm
import torch

from models.schedule_search import build, fit
from models.schedules import DEFAULT_RECIPES, FEW_POINT_RECIPES, gflops_ratio, level_name
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
    few = {
        "f080": "at:5,8:merge+fp",
        "p080": "at:4,7,10:prune+fp",
        "f065": "at:4,8:merge+fp",
        "f050": "at:2,5,8:prunef,merge,merge+fp",
        "f040": "at:1,4,7:prunef,merge,merge+fp",
    }
    assert set(few) == set(FEW_POINT_RECIPES)
    for name, spec in few.items():
        _, steps = fit(spec, FEW_POINT_RECIPES[name][0], deit_shape_model)
        assert steps == deit_shape_model.level(name).schedule, name


def test_unknown_family():
    with pytest.raises(ValueError, match="unknown schedule"):
        build("shuffle:2", 3.0, 12, 197)


def test_a_few_reduction_points_and_the_models_own_levels(deit_shape_model):
    steps = build("at:3,6,9:prunef,prune,merge+fp", 0.3, 12, 197)
    assert [(s.block, s.reducer, s.fuse) for s in steps] == [
        (3, "prune", True),
        (6, "prune", False),
        (9, "merge", False),
        (11, "prune", False),
    ]
    assert [s.block for s in fit("at:4,8:merge+fp", 0.6, deit_shape_model)[1]] == [4, 8, 11]
    assert fit("level:l050", 0.0, deit_shape_model)[1] == deit_shape_model.level("l050").schedule
    with pytest.raises(ValueError, match="one reducer, or one per block"):
        build("at:3,6,9:prune,merge", 0.3, 12, 197)


def test_stability_predictions_run_in_bf16_and_under_noise():
    from models import load_model
    from models.schedule_search import predictions

    torch.manual_seed(0)
    model = load_model("vit_tiny_test", pretrained=False).eval()
    x = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    clean = predictions(model, x, "l050")
    assert torch.equal(predictions(model, x, "l050", noise=0.0), clean)  # no noise: the same answers
    for kwargs in ({"bf16": True}, {"noise": 1e-3}):
        assert predictions(model, x, "l050", **kwargs).shape == clean.shape
