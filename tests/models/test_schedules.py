"""Schedules: the default recipes fit any ViT under their GFLOPs targets."""

from __future__ import annotations

import pytest
import timm
import torch

from models.schedules import DEFAULT_RECIPES, Recipe, fit, gflops_ratio
from models.sparse_vit import vit_shape


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "deit_small_patch16_224", "vit_base_patch16_384"])
def test_default_recipes_fit_any_vit(name):
    with torch.device("meta"):
        shape = vit_shape(timm.create_model(name, pretrained=False))
    for target, recipe in DEFAULT_RECIPES.items():
        steps = fit(recipe, shape, target)
        assert target - 0.02 < gflops_ratio(shape, steps) <= target
        keeps = [s.keep for s in steps]
        assert keeps == sorted(keeps, reverse=True) and keeps[-1] == 2  # last block: class token (+1)


def test_recipe_profile_is_checked():
    with pytest.raises(ValueError, match="profile"):
        Recipe(profile="linear")
