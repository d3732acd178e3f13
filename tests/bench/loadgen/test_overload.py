"""The overload experiment's pure parts: targets, the markdown table, the doc block, levels and card accuracy."""

import math
from pathlib import Path

from bench.loadgen.client import Result
from bench.loadgen.docblock import replace_block
from bench.loadgen.overload import BEGIN, END, check_targets, levels_of, markdown, served_top1
from bench.loadgen.report import summarize


def row(policy, load_x, *, goodput, attainment, shed, dense_frac):
    return {
        "policy": policy,
        "load_x": load_x,
        "goodput_rps": goodput,
        "attainment": attainment,
        "shed_fraction": shed,
        "level_fractions": {"dense": dense_frac, "l050": 1 - dense_frac},
    }


def test_targets_pass_and_fail():
    rows = [
        row("adaptive", 2.0, goodput=40, attainment=0.995, shed=0.03, dense_frac=0.1),
        row("fixed:dense", 2.0, goodput=20, attainment=0.4, shed=0.0, dense_frac=1.0),
        row("adaptive", 0.5, goodput=10, attainment=1.0, shed=0.0, dense_frac=0.9),
        row("adaptive", 3.0, goodput=45, attainment=0.93, shed=0.5, dense_frac=0.0),
        row("fixed:l040", 2.0, goodput=36, attainment=1.0, shed=0.1, dense_frac=0.0),
    ]
    checks = {c["target"]: c for c in check_targets(rows, ["adaptive", "fixed:dense", "fixed:l040"])}
    assert checks["adaptive at 2x: deadline met for admitted >= 0.99"]["pass"]
    assert checks["adaptive at 2x: shed fraction <= 0.05"]["pass"]
    assert checks["adaptive / fixed-dense goodput at 2x >= 1.8"]["value"] == 2.0
    dense = checks["adaptive at 0.5x: dense fraction >= 0.95"]
    assert dense["value"] == 0.9 and not dense["pass"]
    reference = checks["(reference) fixed:l040 / fixed-dense goodput at 2x"]
    assert reference["value"] == 1.8 and reference["pass"] is None
    burst = checks["adaptive at 3x: deadline met for admitted >= 0.95"]
    assert burst["value"] == 0.93 and not burst["pass"]


def test_markdown_table_and_block_replacement(tmp_path):
    results = [
        Result(index=i, cls="b", scheduled_s=i / 10, budget_ms=100, outcome="ok", latency_ms=20.0, level="dense")
        for i in range(10)
    ]
    s = summarize(results, duration_s=1.0)
    doc = {
        "capacity": {"capacity_rps": 10.0},
        "cpu": "Test CPU",
        "model": "m",
        "api": "v1",
        "budget_ms": 100,
        "point_s": 1,
        "settings": {},
        "wall_s": 60,
        "command": "python -m bench.loadgen.overload",
        "rows": [{"policy": "adaptive", "load_x": 1.0, "served_top1": 0.8, **s}],
        "targets": [],
    }
    docs = tmp_path / "docs" / "loadtest.md"
    docs.parent.mkdir()
    docs.write_text(f"# title\n\n{BEGIN}\nold\n{END}\n\n## after\n")
    text = markdown(doc, tmp_path / "docs" / "sweep.png", docs)
    assert "| adaptive | 1x | 10.0 | 10.0 | 100.0% | 0.0% | 0 | 20 | 20 | n/a |" in text and "Test CPU" in text
    replace_block(docs, text, begin=BEGIN, end=END)
    out = docs.read_text()
    assert out.startswith("# title") and out.rstrip().endswith("## after")
    assert "old" not in out and "](sweep.png)" in out
    replace_block(docs, text, begin=BEGIN, end=END)
    assert docs.read_text() == out  # idempotent


def test_markdown_names_the_recalibrated_capacities():
    results = [
        Result(index=i, cls="b", scheduled_s=i / 10, budget_ms=100, outcome="ok", latency_ms=20.0, level="dense")
        for i in range(10)
    ]
    s = summarize(results, duration_s=1.0)
    rows = [
        {"policy": p, "load_x": x, "capacity_rps": c, "served_top1": 0.8, **s}
        for x, c in ((0.5, 30.0), (2.0, 27.5))
        for p in ("adaptive", "fixed:dense")
    ]
    doc = {
        "capacity": {"capacity_rps": 33.0},
        "cpu": "Test CPU",
        "model": "m",
        "api": "v2",
        "budget_ms": 100,
        "point_s": 1,
        "settings": {},
        "wall_s": 60,
        "command": "python -m bench.loadgen.overload",
        "rows": rows,
        "targets": [],
        "interleave": True,
        "recalibrate_s": 8.0,
    }
    text = markdown(doc, Path("sweep.png"), None)
    assert "**33.0 req/s**, re-measured for 8 s before each load" in text and "(0.5x: 30.0, 2x: 27.5 req/s)" in text
    doc["recalibrate_s"] = 0.0
    assert "re-measured" not in markdown(doc, Path("sweep.png"), None)


def test_levels_found_in_config_and_card_accuracy():
    assert levels_of({"levels": "dense,l090, l050"}) == ["dense", "l090", "l050"]
    assert levels_of({"levels": {"string_value": "dense,l050"}}) == ["dense", "l050"]
    assert levels_of({"levels": ["dense"]}) == ["dense"] and levels_of({}) == []
    assert served_top1({"dense": 0.5, "l050": 0.5}, {"dense": 0.8, "l050": 0.7}) == 0.75
    assert math.isnan(served_top1({"l040": 1.0}, {"dense": 0.8}))


def test_bad_procs_is_one_line_and_exit_2(capsys):
    from bench.loadgen.overload import main

    assert main(["--procs", "0", "--capacity-rps", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--procs must be 1..64" in err[0]
