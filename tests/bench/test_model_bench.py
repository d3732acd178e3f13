"""The model bench on the CPU with the tiny model: every cell measured, utilization."""

from __future__ import annotations

import math

import pytest
import torch

from bench.report import model_markdown


def test_model_bench_measures_every_cell_and_utilization(model_result):
    r = model_result
    assert r["environment"]["device"] == "cpu" and r["environment"]["torch"] == torch.__version__
    assert {(t["mode"], t["level"], t["batch"]) for t in r["throughput"]} == {
        ("eager", lv, b) for lv in ("dense", "l050") for b in (1, 2)
    }
    assert {(t["mode"], t["level"]) for t in r["latency"]} == {("eager", "dense"), ("eager", "l050")}
    assert r["cuda_graphs"] is None and any("CUDA graphs skipped" in n for n in r["notes"])
    assert all(t["calls"] == 2 for t in r["throughput"])  # one call per cell in each of 2 passes
    peak = r["matmul_peak_tflops"]["bf16"]
    for t in r["throughput"]:
        assert t["images_per_s"] > 0
        assert math.isclose(t["achieved_tflops"], 2 * t["gflops"] * t["images_per_s"] / 1e3, rel_tol=1e-9)
        assert math.isclose(t["mfu_bf16_peak"], t["achieved_tflops"] / peak, rel_tol=1e-9)
    md = model_markdown(r, "python -m bench model ...")
    for heading in ("(a) images/s", "(b) batch-1 latency", "(c) FLOP utilization", "torch " + torch.__version__):
        assert heading in md
    assert md.count("| l050 |") == 1 + 2 + 1 + 1  # operators, two batch rows, one latency row, one utilization row
    # Row (a) of l050 at the first batch: speed-up, ideal and their ratio, as measured.
    b0 = r["settings"]["batch_sizes"][0]
    by = {(t["level"], t["batch"]): t["images_per_s"] for t in r["throughput"] if t["mode"] == "eager"}
    speedup = by[("l050", b0)] / by[("dense", b0)]
    ideal = r["levels"]["dense"]["gflops"] / r["levels"]["l050"]["gflops"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| l050 | ")]
    cells = next(c for c in rows if c[2] == str(b0))
    assert [float(c) for c in cells[-3:]] == pytest.approx([speedup, ideal, speedup / ideal], rel=5e-3)


def test_only_the_measured_levels_are_warmed_and_captured():
    # On the H200 the bench captured all 8 levels of the model (24 graphs) for a run that
    # measured 2: the runners now get the measured levels.
    from bench.model_bench import ModelBenchConfig, _runners
    from models import load_model

    model = load_model("vit_tiny_test", pretrained=False)
    cfg = ModelBenchConfig(model="vit_tiny_test", device="cpu", batch_sizes=(1, 4), levels=("dense", "l050"))
    runners, _ = _runners(model, cfg, torch.device("cpu"), ("dense", "l050"))
    assert {name: r.levels for name, r in runners.items()} == {"eager": ("dense", "l050")}
