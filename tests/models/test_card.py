"""The committed level card for DeiT-Tiny: loads, matches the code's levels, beats the baseline."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from models.card import CARDS_DIR, LevelCard
from models.make_card import combine
from models.sparse_vit import SparseViT

DEIT_TINY = "deit_tiny_patch16_224"
# The naive baseline of the issue (class-attention top-k pruning once at block 3, no fusion),
# measured on imagenet-samples: (GFLOPs ratio, top-1 change in points, agreement with dense).
# The first two points are the issue's; the 0.40 point was measured for the l040 level with
# `python -m models.schedule_search --set ../shared/assets/imagenet-samples --subset 0 ... naive@0.4`.
NAIVE = ((0.76, -1.6, 0.92), (0.60, -4.4, 0.86), (0.40, -29.4, 0.546))


@pytest.fixture(scope="module")
def card() -> LevelCard:
    return LevelCard.for_model(DEIT_TINY)


@pytest.fixture(scope="module")
def levels():
    with torch.device("meta"):  # the schedules only need the shapes
        return SparseViT(timm.create_model(DEIT_TINY, pretrained=False)).levels


def test_card_lists_the_models_levels(card, levels):
    assert [e.name for e in card.levels] == list(levels)
    raw = json.loads((CARDS_DIR / f"{DEIT_TINY}.json").read_text())
    for row in raw["levels"]:
        lv = levels[row["name"]]
        assert row["tokens_per_block"] == list(lv.tokens_per_block), row["name"]
        assert row["gflops"] == pytest.approx(lv.gflops, abs=1e-3)
        assert row["gflops_ratio"] == pytest.approx(lv.gflops_ratio, abs=1e-3)
        assert row["gflops_ratio"] <= (1.0 if row["name"] == "dense" else int(row["name"][1:]) / 100) + 1e-9


def test_card_covers_both_evaluation_sets(card):
    raw = json.loads((CARDS_DIR / f"{DEIT_TINY}.json").read_text())
    assert set(raw["datasets"]) == {"imagenet-samples", "imagenet-val"}
    assert raw["images"] == 2405 == sum(d["images"] for d in raw["datasets"].values())
    assert all("models.evaluate" in c for c in raw["commands"])
    dense = card.entry("dense")
    assert dense.agreement == 1.0 and dense.top1 == pytest.approx(79.83, abs=0.2)
    # The combined figures are the image-weighted mean of the two sets.
    recombined = combine(
        [
            {"model": raw["model"], "device": raw["device"], "batch_size": raw["batch_size"], "dataset": k, **v}
            for k, v in raw["datasets"].items()
        ]
    )
    assert recombined["levels"] == raw["levels"]


def naive_baseline(ratio: float) -> tuple[float, float]:
    """The baseline's (top-1 change, agreement) at a GFLOPs ratio: linear between its measured
    points, held at the end points outside them."""
    if ratio >= NAIVE[0][0]:
        return NAIVE[0][1:]
    for (r_hi, d_hi, a_hi), (r_lo, d_lo, a_lo) in zip(NAIVE, NAIVE[1:]):
        if ratio >= r_lo:
            t = (ratio - r_lo) / (r_hi - r_lo)
            return d_lo + t * (d_hi - d_lo), a_lo + t * (a_hi - a_lo)
    return NAIVE[-1][1:]


def test_every_sparse_level_beats_the_naive_baseline(card):
    raw = json.loads((CARDS_DIR / f"{DEIT_TINY}.json").read_text())
    samples = {r["name"]: r for r in raw["datasets"]["imagenet-samples"]["levels"]}
    dense_top1 = samples["dense"]["top1"]
    for name, row in samples.items():
        drop, agreement = naive_baseline(row["gflops_ratio"])
        assert row["top1"] - dense_top1 > drop, name
        assert row["agreement"] > agreement, name


def test_sparse_levels_are_faster_on_the_card(card):
    dense = card.entry("dense").images_per_s
    assert all(e.images_per_s > dense for e in card.levels if e.gflops_ratio <= 0.7)
