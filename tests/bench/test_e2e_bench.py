"""The end-to-end bench: open-loop ladders against a real tiny server, the figure, its report."""

from __future__ import annotations

import importlib.util

import pytest

from bench.e2e_bench import E2EBenchConfig, ladder_row, measure_model_only, point_info, run_e2e_bench
from bench.loadgen.ladder import Point
from bench.report import e2e_markdown, plot_e2e
from bench.targets import e2e_checks, model_only_reference


def _info(p99_ms: float, why: str = "") -> dict:
    summary = {k: 0 for k in ("shed", "expired", "error", "timeout", "unsent")}
    summary.update(requests=50, ok=50, throughput_rps=10.0, p50_ms=p99_ms / 2, p99_ms=p99_ms, max_ms=p99_ms)
    summary.update(server_p99_ms=p99_ms / 3, mean_batch=1.5, client_cpu_cores=0.1, nominal_rps=10.0)
    summary["generators"] = [{"send_lag_p99_ms": 2.0}, {"send_lag_p99_ms": 7.0}]
    return point_info(summary, why)


def test_the_figure_is_the_highest_passing_rate_over_model_only(model_result):
    ref = {**model_only_reference(model_result, 2)["l050"], "images_per_s": 50.0}
    points = [Point(10.0, True, _info(20)), Point(15.0, True, _info(30)), Point(22.0, False, _info(300, "p99 300 ms"))]
    row = ladder_row(points, ref)
    assert row["highest_rps"] == 15 and row["at_highest"]["p99_ms"] == 30
    assert row["at_highest"]["generator_send_lag_p99_ms"] == 7.0  # the worst generator
    assert row["first_too_high_rps"] == 22 and row["first_too_high_why"] == "p99 300 ms"
    assert row["ratio_to_model_only"] == pytest.approx(15 / 50) and row["model_only_batch"] == 2
    assert ladder_row([Point(10, False, _info(500, "p99"))], ref)["highest_rps"] == 0.0
    result = {
        "environment": model_result["environment"],
        "settings": {
            "model": "deit_tiny_patch16_224",
            "max_batch_size": 2,
            "procs": 2,
            "p99_bound_ms": 100.0,
            "duration_s": 1.0,
            "budget_ms": 1000.0,
            "api": "v2",
            "model_only_source": "test",
        },
        "rows": [{"api_processes": "2", "level": "l050", "input": "uint8", **row}],
    }
    md = e2e_markdown(result, "cmd")
    assert "| 2 | l050 | uint8 | 15.0 |" in md and "22 (p99 300 ms)" in md and "2 generator processes" in md
    ratio, rate = e2e_checks(result)
    assert ratio.value == row["ratio_to_model_only"] and ratio.threshold == 0.90 and not ratio.ok
    assert rate.value == 15 and rate.threshold == 6000 and "p99 <= 100 ms" in rate.name


needs_server = pytest.mark.skipif(
    importlib.util.find_spec("service.__main__") is None, reason="service.__main__ does not exist"
)


def test_model_only_is_measured_at_the_servers_largest_batch(monkeypatch):
    import bench.model_bench

    seen = []
    monkeypatch.setattr(bench.model_bench, "run_model_bench", lambda cfg: seen.append(cfg) or {"ok": 1})
    cfg = E2EBenchConfig(model="vit_tiny_test", device="cpu", max_batch_size=24, levels=("dense", "l050"))
    assert measure_model_only(cfg) == {"ok": 1}
    (mb,) = seen
    assert mb.batch_sizes == (24,) and mb.levels == ("dense", "l050") and mb.model == "vit_tiny_test"


@needs_server
def test_a_short_ladder_against_a_two_process_tiny_server(tmp_path, model_result):
    cfg = E2EBenchConfig(
        model="vit_tiny_test",
        device="cpu",
        precision="fp32",
        max_batch_size=2,
        levels=("l050",),
        inputs=("uint8",),
        api_processes=("2",),
        procs=2,
        p99_bound_ms=1000.0,  # generous: a shared 2-core CPU; the bound's logic is tested above
        duration_s=1.0,
        warmup_s=0.5,
        start_rps=10.0,
        step=2.0,
        max_points=2,
        images=2,
    )
    result = run_e2e_bench(cfg, model_only=model_result)
    assert {"sait-engine", "sait-api-0", "sait-api-1"} <= set(result["server_processes"]["2"])
    (row,) = result["rows"]
    assert row["api_processes"] == "2" and [p["rate_rps"] for p in row["points"]] == [10.0, 20.0]
    first = row["points"][0]
    assert first["passed"], first  # 10 requests/s of a tiny model within a second
    assert first["requests"] == first["ok"] > 0 and first["generator_send_lag_p99_ms"] >= 0
    assert row["highest_rps"] >= 10.0 and result["model_only"]["l050"]["batch"] == 2
    assert row["ratio_to_model_only"] == pytest.approx(
        row["highest_rps"] / result["model_only"]["l050"]["images_per_s"]
    )
    plot_e2e(tmp_path / "e2e.png", result)
    assert (tmp_path / "e2e.png").stat().st_size > 1000
    assert "| 2 | l050 | uint8 |" in e2e_markdown(result, "cmd")
