"""The benchmark suite on CPU with the tiny model: timing bounds, each suite's JSON and tables."""
from __future__ import annotations

import asyncio
import csv
import json
import math

import httpx
import numpy as np
import pytest

import torch
from PIL import Image

from models import load_model

from service.bench.__main__ import main
from service.bench.e2e_bench import closed_loop, summarize
from service.bench.model_bench import ModelBenchConfig, run_model_bench
from service.bench.precision_bench import IMAGE_SETS, PrecisionBenchConfig, pick_evenly, run_precision_bench
from service.bench.report import e2e_markdown, model_markdown, precision_markdown
from service.bench.targets import e2e_checks, model_checks, targets_markdown
from service.bench.timing import time_calls
from service.loadgen.client import Target
from service.loadgen.payloads import synthetic
from service.loadgen.scenario import Dials

CPU = torch.device("cpu")


def test_time_calls_is_bounded_in_count():
    calls = []
    t = time_calls(lambda: calls.append(1), device=CPU, warmup=2, min_calls=3, max_calls=5, min_time_s=60.0)
    assert len(t.samples_s) == 5 and len(calls) == 7  # max_calls wins over min_time_s
    t = time_calls(lambda: None, device=CPU, warmup=0, min_calls=4, max_calls=100, min_time_s=0.0)
    assert len(t.samples_s) == 4
    assert t.percentile_s(0) == min(t.samples_s) and t.percentile_s(100) == max(t.samples_s)
    with pytest.raises(ValueError):
        time_calls(lambda: None, device=CPU, min_calls=5, max_calls=2)


def test_pick_evenly_spreads_over_the_sorted_list():
    files = [f"f{i:02d}" for i in range(10)]
    assert pick_evenly(files, 5) == ["f00", "f02", "f04", "f06", "f08"]
    assert pick_evenly(files[::-1], 0) == files
    assert pick_evenly(files, 50) == files


@pytest.fixture(scope="module")
def model_result():
    cfg = ModelBenchConfig(model="vit_tiny_test", device="cpu", precision="fp32", batch_sizes=(1, 2),
                           levels=("dense", "l050"), min_time_s=0.0, min_calls=1, max_calls=1, matmul_n=64,
                           rounds=2)
    return run_model_bench(cfg)


def test_model_bench_measures_every_cell_and_utilization(model_result):
    r = model_result
    assert r["environment"]["device"] == "cpu" and r["environment"]["torch"] == torch.__version__
    assert {(t["mode"], t["level"], t["batch"]) for t in r["throughput"]} == {
        ("eager", lv, b) for lv in ("dense", "l050") for b in (1, 2)}
    assert {(t["mode"], t["level"]) for t in r["latency"]} == {("eager", "dense"), ("eager", "l050")}
    assert r["cuda_graphs"] is None and any("CUDA graphs skipped" in n for n in r["notes"])
    assert all(t["calls"] == 2 for t in r["throughput"])  # one call per cell in each of 2 passes
    peak = r["matmul_peak_tflops"]["bf16"]
    for t in r["throughput"]:
        assert t["images_per_s"] > 0
        assert math.isclose(t["achieved_tflops"], 2 * t["gflops"] * t["images_per_s"] / 1e3, rel_tol=1e-9)
        assert math.isclose(t["mfu_bf16_peak"], t["achieved_tflops"] / peak, rel_tol=1e-9)
    md = model_markdown(r, "python -m service.bench model ...")
    for heading in ("(a) images/s", "(b) batch-1 latency", "(c) FLOP utilization", "torch " + torch.__version__):
        assert heading in md
    assert md.count("| l050 |") == 2 + 1 + 1  # two batch rows, one latency row, one utilization row
    # Row (a) of l050 at the first batch: speed-up, ideal and their ratio, as measured.
    b0 = r["settings"]["batch_sizes"][0]
    by = {(t["level"], t["batch"]): t["images_per_s"] for t in r["throughput"] if t["mode"] == "eager"}
    speedup = by[("l050", b0)] / by[("dense", b0)]
    ideal = r["levels"]["dense"]["gflops"] / r["levels"]["l050"]["gflops"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| l050 | ")]
    cells = next(c for c in rows if c[2] == str(b0))
    assert [float(c) for c in cells[-3:]] == pytest.approx([speedup, ideal, speedup / ideal], rel=5e-3)


def test_cli_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["model", "--model", "vit_tiny_test", "--device", "cpu", "--precision", "fp32", "--batch-sizes", "1",
               "--levels", "l070", "--min-time-s", "0", "--max-calls", "1", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["command"].startswith("python -m service.bench model") and doc["settings"]["levels"] == ["l070"]
    assert "| l070 |" in out.with_suffix(".md").read_text()


def test_cli_bad_input_is_one_line_and_nonzero(tmp_path, capsys):
    rc = main(["model", "--model", "vit_tiny_test", "--device", "cpu", "--levels", "l999", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("bench model: KeyError") and "l999" in err[-1]
    with pytest.raises(SystemExit) as exc:
        main(["model", "--batch-sizes", "0"])
    assert exc.value.code == 2


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


def test_precision_bench_compares_every_level_with_fp32(tmp_path):
    _fake_assets(tmp_path, per_set=3)
    cfg = PrecisionBenchConfig(model="vit_tiny_test", device="cpu", precisions=("bf16", "bf16-head16"),
                               images_per_set=2, batch_size=2, assets=str(tmp_path))
    r = run_precision_bench(cfg)
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
        run_precision_bench(PrecisionBenchConfig(model="vit_tiny_test", device="cpu", precisions=("bf16-x",),
                                                 assets=str(tmp_path)))


def _fake_server(request: httpx.Request) -> httpx.Response:
    if request.method == "GET":
        return httpx.Response(200, json={"inputs": [{"name": "image_bytes", "datatype": "BYTES"},
                                                    {"name": "pixels", "datatype": "UINT8"}]})
    head_len = int(request.headers["Inference-Header-Content-Length"])
    header = json.loads(request.content[:head_len])
    assert header["inputs"][0]["name"] == "pixels" and header["parameters"]["density"] == "l050"
    return httpx.Response(200, json={"outputs": [], "parameters": {"level": "l050", "compute_ms": 1.5}})


def test_closed_loop_runs_bounded_and_summarizes(model_result):
    dials = Dials(name="l050", density="l050", latency_budget_ms=60_000)
    results, elapsed = asyncio.run(closed_loop(
        "http://test", Target(api="v2", kind="uint8", model="m"), dials, synthetic(count=2, kind="uint8", side=32),
        concurrency=3, duration_s=0.2, budget_ms=60_000, transport=httpx.MockTransport(_fake_server)))
    assert 0.2 <= elapsed < 5.0 and len(results) >= 3
    s = summarize(results, elapsed)
    assert s["ok"] == s["requests"] == len(results) and s["levels_answered"] == {"l050": len(results)}
    assert s["images_per_s"] == pytest.approx(len(results) / elapsed) and s["server_compute_ms_p50"] == 1.5
    e2e = {"settings": {"model": "m", "max_batch_size": 2, "concurrency": 3, "duration_s": 0.2, "api": "v2"},
           "environment": model_result["environment"], "rows": [{"level": "l050", "input": "uint8", **s}]}
    md = e2e_markdown(e2e, "cmd", model_only=model_result)
    ref = next(t for t in model_result["throughput"] if t["level"] == "l050" and t["batch"] == 2)
    assert f"{ref['images_per_s']:.1f} (batch 2)" in md


def test_targets_are_computed_from_measured_cells(model_result):
    # The CPU fixture measures batches 1 and 2 eager: no batch >= 64 and no graphs, so the
    # model checks are empty; a copy relabelled as batch 64 yields one speed-up check.
    assert model_checks(model_result) == []
    relabelled = {**model_result, "settings": {**model_result["settings"], "batch_sizes": (64,)},
                  "throughput": [{**t, "batch": 64} for t in model_result["throughput"] if t["batch"] == 2]}
    (check,) = model_checks(relabelled)
    by = {t["level"]: t["images_per_s"] for t in relabelled["throughput"]}
    ideal = model_result["levels"]["dense"]["gflops"] / model_result["levels"]["l050"]["gflops"]
    assert check.value == pytest.approx(by["l050"] / by["dense"] / ideal) and check.threshold == 0.95
    e2e = {"settings": {"max_batch_size": 2}, "rows": [{"level": "dense", "input": "jpeg", "images_per_s": 1.0}]}
    (c,) = e2e_checks(e2e, model_result)
    ref = next(t for t in model_result["throughput"] if t["level"] == "dense" and t["batch"] == 2)
    assert c.value == pytest.approx(1.0 / ref["images_per_s"]) and c.threshold == 0.70
    assert ("| yes |" if c.ok else "| NO |") in targets_markdown([c])


def test_decode_cost_reports_decode_and_every_level(tmp_path, capsys):
    from PIL import Image

    from service.bench.decode_cost import main

    Image.new("RGB", (64, 48), (120, 30, 200)).save(tmp_path / "a.jpg")
    assert main(["--model", "vit_tiny_test", "--images", str(tmp_path), "--count", "1", "--batch-size", "2",
                 "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "CPU ms per photo" in out and "model dense" in out and out.count("CPU ms per image") >= 2


def test_decode_cost_without_images_is_one_line_and_exit_2(tmp_path, capsys):
    from service.bench.decode_cost import main

    assert main(["--model", "vit_tiny_test", "--images", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
