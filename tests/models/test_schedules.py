"""Schedules: the default recipes fit any ViT under their GFLOPs targets."""

from __future__ import annotations

import pytest
import timm
import torch

from models.schedules import DEFAULT_RECIPES, FEW_POINT_RECIPES, Recipe, fit, gflops_ratio
from models.sparse_vit import SparseViT, vit_shape


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "deit_small_patch16_224", "vit_base_patch16_384"])
def test_default_recipes_fit_any_vit(name):
    with torch.device("meta"):
        shape = vit_shape(timm.create_model(name, pretrained=False))
    for target, recipe in [*DEFAULT_RECIPES.items(), *FEW_POINT_RECIPES.values()]:
        steps = fit(recipe, shape, target)
        assert target - 0.02 < gflops_ratio(shape, steps) <= target
        keeps = [s.keep for s in steps]
        assert keeps == sorted(keeps, reverse=True) and keeps[-1] == 2  # last block: class token (+1)


def test_recipe_profile_is_checked():
    with pytest.raises(ValueError, match="profile"):
        Recipe(profile="linear")


@pytest.mark.parametrize(
    "points,reducers,spec",
    [
        ((4 / 12, 8 / 12), (), "at:4,8:merge+fp"),
        ((3 / 12, 6 / 12, 9 / 12), ("prunef", "merge", "merge"), "at:3,6,9:prunef,merge,merge+fp"),
    ],
)
def test_a_recipe_of_a_few_points_is_the_searched_schedule(points, reducers, spec):
    # The schedule the search measured (models.schedule_search, "at:") is the one a default
    # recipe of the same points builds, token for token.
    from models.schedule_search import fit as search_fit
    from models.schedules import Recipe, fit

    with torch.device("meta"):
        model = SparseViT(timm.create_model("deit_tiny_patch16_224", pretrained=False))
    recipe = Recipe(reducer="merge", points=points, point_reducers=reducers)
    for target in (0.8, 0.6, 0.45):
        assert fit(recipe, model.shape, target) == search_fit(spec, target, model)[1]
