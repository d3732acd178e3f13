"""The precision bench: agreement of reduced precision with fp32 at every level."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from bench.precision_bench import IMAGE_SETS, PrecisionBenchConfig, pick_evenly, run_precision_bench
from bench.report import precision_markdown
from models import load_model


def test_pick_evenly_spreads_over_the_sorted_list():
    files = [f"f{i:02d}" for i in range(10)]
    assert pick_evenly(files, 5) == ["f00", "f02", "f04", "f06", "f08"]
    assert pick_evenly(files[::-1], 0) == files
    assert pick_evenly(files, 50) == files


def _fake_assets(root, per_set: int):
    """Two tiny labelled image sets laid out like ../shared/assets."""
    rng = np.random.default_rng(0)
    for s in IMAGE_SETS:
        folder = root / s
        folder.mkdir(parents=True)
        with (folder / "labels.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["filename", "class_index"])
            for i in range(per_set):
                name = f"img{i}.JPEG"
                Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(folder / name)
                w.writerow([name, i])


def _config(assets, **settings) -> PrecisionBenchConfig:
    return PrecisionBenchConfig(model="vit_tiny_test", device="cpu", assets=str(assets), **settings)


def test_precision_bench_compares_every_level_with_fp32(tmp_path):
    _fake_assets(tmp_path, per_set=3)
    r = run_precision_bench(_config(tmp_path, precisions=("bf16", "bf16-head16"), images_per_set=2, batch_size=2))
    assert r["images"] == {s: 2 for s in IMAGE_SETS}
    n_levels = len(load_model("vit_tiny_test").levels)
    assert len(r["levels"]) == n_levels
    assert len(r["rows"]) == 3 * n_levels  # fp32, bf16 and bf16-head16 at every level
    assert list(r["levels"]) == [row["level"] for row in r["rows"][:n_levels]]
    for row in r["rows"]:
        assert row["images"] == 4 and 0.0 <= row["agreement_with_fp32"] <= 1.0
        if row["precision"] == "fp32":
            assert row["agreement_with_fp32"] == 1.0 and row["disagreements"] == 0
    assert "top-1 agreement with fp32" in precision_markdown(r)


def test_precision_bench_without_assets_or_with_a_bad_variant_says_why(tmp_path):
    with pytest.raises(FileNotFoundError, match="imagenet-samples"):
        run_precision_bench(PrecisionBenchConfig(model="vit_tiny_test", device="cpu", assets=str(tmp_path)))
    _fake_assets(tmp_path, per_set=1)
    with pytest.raises(ValueError, match="bf16-head16"):
        run_precision_bench(
            PrecisionBenchConfig(model="vit_tiny_test", device="cpu", precisions=("bf16-x",), assets=str(tmp_path))
        )


def test_precision_bench_stops_at_its_time_limit_and_says_what_it_skipped(tmp_path):
    _fake_assets(tmp_path, per_set=3)
    # 3 images per set in batches of 2: the last batch of each level is padded; the time limit
    # is over after the first level.
    limits = dict(images_per_set=3, batch_size=2, time_limit_s=1e-9, levels=("dense", "l050"))
    r = run_precision_bench(_config(tmp_path, precisions=("bf16", "fp16"), **limits))
    assert [(row["precision"], row["level"]) for row in r["rows"]] == [("fp32", "dense")]
    assert r["not_measured"].endswith("not measured: fp32 at l050; bf16; fp16")
    assert [p["precision"] for p in r["passes"]] == ["fp32"]
    md = precision_markdown(r)
    assert "**Not measured**" in md and "Passes: fp32" in md


def test_a_padded_last_batch_predicts_what_the_images_alone_do():
    from bench.precision_bench import predict
    from service.device.runner import EagerRunner

    model = load_model("vit_tiny_test", pretrained=False)
    runner = EagerRunner(model, device="cpu", precision="fp32", max_batch_size=4, top_k=1)
    images = torch.randint(0, 256, (5, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    alone = torch.cat([runner.run("l050", images[i : i + 1]).topk_indices[:, 0] for i in range(5)])
    assert torch.equal(predict(runner, "l050", images, 4), alone)
