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
    assert raw["commands"] and all("models.evaluate" in c or "models.make_card" in c for c in raw["commands"])
    dense = card.entry("dense")
    assert dense.agreement == 1.0 and dense.top1 == pytest.approx(79.83, abs=0.2)
    # The combined figures are the image-weighted mean of the two sets.
    recombined = combine(
        [
            {"model": raw["model"], "device": raw["device"], "batch_size": raw["batch_size"], "dataset": k, **v}
            for k, v in raw["datasets"].items()
        ]
    )
    # Operator counts are added to the card after combining (they depend on the model, not the data).
    assert recombined["levels"] == [{k: v for k, v in row.items() if k != "ops"} for row in raw["levels"]]


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


# -- speed per device kind and the levels chosen from it -----------------------------------
def _entry(name, ratio, top1):
    from models.card import CardEntry

    return CardEntry(name, "merge", 1.25 * ratio, ratio, top1, None, None, None)


ENTRIES = (
    _entry("dense", 1.0, 79.8),
    _entry("l090", 0.9, 79.7),
    _entry("l070", 0.7, 79.2),
    _entry("p070", 0.7, 77.0),
    _entry("l050", 0.5, 77.4),
    _entry("p050", 0.5, 75.0),
)


@pytest.mark.parametrize(
    "speedups,expected",
    [
        # Every level faster than the denser ones: all offered.
        (
            {"l090": 1.1, "l070": 1.4, "p070": 1.3, "l050": 1.8, "p050": 1.7},
            ("dense", "l090", "l070", "l050"),
        ),
        # GPU-like: the merge levels are not faster than dense, the prune levels are.
        (
            {"l090": 0.9, "l070": 1.02, "p070": 1.35, "l050": 1.1, "p050": 1.9},
            ("dense", "p070", "p050"),
        ),
        # A level faster only within the noise margin of a more accurate one is dropped.
        (
            {"l090": 1.04, "l070": 1.40, "p070": 1.42, "l050": 1.43, "p050": 2.0},
            ("dense", "l070", "p050"),
        ),
        # Nothing beats dense: dense alone.
        ({"l090": 0.8, "l070": 0.9, "p070": 1.0, "l050": 0.95, "p050": 1.03}, ("dense",)),
    ],
)
def test_choose_levels_keeps_what_is_faster_than_every_more_accurate_level(speedups, expected):
    from models.card import DeviceSpeed, choose_levels

    ips = {"dense": {32: 100.0}} | {name: {32: 100.0 * s} for name, s in speedups.items()}
    speed = DeviceSpeed(kind="cuda:Test GPU", precision="bf16", images_per_s=ips)
    assert choose_levels(ENTRIES, speed, batch=32) == expected


def test_choose_levels_offers_only_measured_levels_and_uses_agreement_without_top1():
    from models.card import CardEntry, DeviceSpeed, choose_levels

    entries = (
        CardEntry("dense", "none", 1.25, 1.0, None, None, 1.0, None),
        CardEntry("l070", "merge", 0.9, 0.7, None, None, 0.97, None),
        CardEntry("p070", "prune", 0.9, 0.7, None, None, 0.90, None),
        CardEntry("l050", "merge", 0.6, 0.5, None, None, 0.92, None),
    )
    ips = {"dense": {1: 10.0, 8: 50.0}, "l070": {8: 70.0}, "p070": {1: 20.0, 8: 80.0}}
    speed = DeviceSpeed(kind="cpu:Test", precision="fp32", images_per_s=ips)
    assert choose_levels(entries, speed, batch=8) == ("dense", "l070", "p070")
    assert choose_levels(entries, speed, batch=1) == ("dense", "p070")  # l070 not measured at 1


def test_speed_tables_are_found_by_device_kind_or_the_only_one_of_that_type():
    from models.card import LevelCard, decisive_batch, speed_for

    table = {"precision": "fp32", "images_per_s": {"dense": {"1": 10, "8": 50, "32": 60}, "l070": {"32": 90}}}
    card = LevelCard.from_dict(
        {
            "model": "m",
            "levels": [{"name": "dense", "gflops": 1.0, "gflops_ratio": 1.0, "ops": 125}],
            "speed": {"cpu:AMD EPYC": table, "cuda:NVIDIA H200": table, "cuda:NVIDIA H100": table},
        }
    )
    assert card.entry("dense").ops == 125
    assert speed_for(card, "cpu:AMD EPYC").kind == "cpu:AMD EPYC"
    assert speed_for(card, "cpu:Intel Xeon").kind == "cpu:AMD EPYC"  # the only CPU table
    assert speed_for(card, "cuda:NVIDIA A100") is None  # two GPU tables: neither is assumed
    speed = speed_for(card, "cpu:AMD EPYC")
    assert speed.speedup("l070", 32) == pytest.approx(1.5) and speed.speedup("l070", 8) is None
    assert [decisive_batch(speed, m) for m in (64, 32, 16, 1)] == [32, 32, 8, 1]
    with pytest.raises(ValueError, match="malformed speed table"):
        from models.card import device_speeds

        device_speeds(LevelCard.from_dict({"model": "m", "levels": [], "speed": {"cpu:x": {"images_per_s": 3}}}))
