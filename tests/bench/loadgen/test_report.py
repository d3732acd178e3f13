"""Summary numbers, time series and written files."""

import csv
import json
import math

from bench.loadgen.client import Result
from bench.loadgen.report import level_order, plot_sweep, segment_summaries, summarize, time_series, write_run


def make(i, outcome, latency_ms=math.nan, level="", budget_ms=100.0, cls="c"):
    return Result(
        index=i,
        cls=cls,
        scheduled_s=i * 0.1,
        budget_ms=budget_ms,
        outcome=outcome,
        status=200 if outcome == "ok" else 429,
        latency_ms=latency_ms,
        level=level,
        send_lag_ms=1.0,
    )


RESULTS = (
    [make(i, "ok", 10.0 * (i + 1), "dense") for i in range(8)]  # 10..80 ms: all within 100
    + [make(8, "ok", 150.0, "l050"), make(9, "ok", 90.0, "l050")]
    + [
        make(10, "shed"),
        make(11, "expired", 120.0),
        make(12, "error", 5.0),
        make(13, "unsent"),
        make(14, "bad_request", 3.0),
    ]
)


def test_summary_counts_and_rates():
    s = summarize(RESULTS, duration_s=2.0)
    assert s["requests"] == 15 and s["sent"] == 14
    assert (s["ok"], s["shed"], s["expired"], s["error"], s["unsent"], s["bad_request"]) == (10, 1, 1, 1, 1, 1)
    assert s["admitted"] == 12  # ok + expired + error
    assert s["deadline_met"] == 9  # the 150 ms answer missed
    assert s["attainment"] == 9 / 12
    assert s["throughput_rps"] == 5.0 and s["goodput_rps"] == 4.5
    assert s["shed_fraction"] == 1 / 14
    assert s["levels"] == {"dense": 8, "l050": 2} and s["level_fractions"]["dense"] == 0.8
    assert s["max_ms"] == 150.0 and 80 <= s["p90_ms"] <= 150
    assert s["p50_ms"] == 55.0  # ok latencies 10..90 and 150: median of 50 and 60


def test_mean_batch_is_per_batch_not_per_request():
    # One batch of 4 (its 4 requests each report 4) and two batches of 1: 6 images, 3 batches.
    sizes = [4, 4, 4, 4, 1, 1]
    rs = [make(i, "ok", 10.0, "l050" if b == 4 else "dense") for i, b in enumerate(sizes)]
    for r, b in zip(rs, sizes):
        r.batch_size = b
    rs.append(make(6, "shed"))  # not computed: no batch
    s = summarize(rs, duration_s=1.0)
    assert s["mean_batch"] == 2.0
    assert s["mean_batch_by_level"] == {"dense": 1.0, "l050": 4.0}
    assert math.isnan(summarize(RESULTS, duration_s=2.0)["mean_batch"])  # servers that do not say


def test_time_series_bins_by_schedule():
    rows = time_series(RESULTS, window_s=1.0)
    assert [r["t_s"] for r in rows] == [0.0, 1.0]
    assert sum(r["ok"] for r in rows) == 10
    assert rows[0]["levels"] == {"dense": 8, "l050": 2}


def test_write_run_writes_json_csv_png(tmp_path):
    s = summarize(RESULTS, duration_s=2.0)
    paths = write_run(tmp_path, RESULTS, s, window_s=0.5, title="t")
    doc = json.loads(paths["summary"].read_text())
    assert doc["ok"] == 10 and len(doc["series"]) == 3
    rows = list(csv.DictReader(paths["results"].open()))
    assert len(rows) == 15 and rows[0]["deadline_met"] == "True"
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = paths["series"].read_text().splitlines()[0]
    assert "level_dense" in header and "p99_ms" in header


def test_empty_percentiles_are_null_in_json(tmp_path):
    s = summarize([make(0, "shed")], duration_s=1.0)
    assert math.isnan(s["p99_ms"])
    paths = write_run(tmp_path, [make(0, "shed")], s, window_s=1.0, title="t", plot=False)
    assert json.loads(paths["summary"].read_text())["p99_ms"] is None


def test_level_order_and_sweep_plot(tmp_path):
    assert level_order(["l050", "unknown", "dense", "l090"]) == ["dense", "l090", "l050", "unknown"]
    rows = [
        {"policy": p, "load_x": x, "goodput_rps": g, "attainment": a}
        for p, x, g, a in [
            ("adaptive", 1, 10, 1.0),
            ("adaptive", 2, 19, 0.99),
            ("fixed", 1, 10, 1.0),
            ("fixed", 2, 3, 0.2),
        ]
    ]
    plot_sweep(tmp_path / "s.png", rows, title="t")
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_time_inside_and_outside_the_server():
    rs = [
        Result(index=i, cls="c", scheduled_s=0.0, budget_ms=100, outcome="ok", latency_ms=50.0, server_total_ms=20.0)
        for i in range(4)
    ]
    s = summarize(rs, duration_s=1.0)
    assert s["server_p50_ms"] == 20.0 and s["outside_p99_ms"] == 30.0


def test_segment_summaries_split_by_schedule():
    segs = segment_summaries(RESULTS, [(0.0, 0.5), (0.5, 1.5)])
    assert [s["requests"] for s in segs] == [5, 10]
    assert segs[0]["offered_rps"] == 10.0 and segs[1]["start_s"] == 0.5
