"""The paired comparison of server variants: parsing, the table, and a short real run."""

import json
import subprocess
import sys

import pytest

from bench.loadgen.compare import UsageError, markdown, parse_variant
from bench.loadgen.server import REPO_ROOT


def test_parse_variant_settings_and_checkout():
    v = parse_variant("share0.6:OVERLOAD_WAIT_SHARE=0.6; sait_safety_margin = 0.2")
    assert (v.name, v.settings, v.root) == ("share0.6", {"OVERLOAD_WAIT_SHARE": "0.6", "SAFETY_MARGIN": "0.2"}, None)
    assert parse_variant("defaults").settings == {}
    assert parse_variant(f"here@{REPO_ROOT}:").root == REPO_ROOT


@pytest.mark.parametrize(
    "spec, message",
    [
        (":POLICY=adaptive", "expected NAME"),
        ("POLICY=adaptive", "expected NAME"),
        ("a:POLICY", "is not KEY=VALUE"),
        ("old@/nonexistent/checkout:", "not a checkout"),
    ],
)
def test_parse_variant_refuses(spec, message):
    with pytest.raises(UsageError, match=message):
        parse_variant(spec)


def summary(att, shed, good, batch):
    return {"attainment": att, "shed_fraction": shed, "goodput_rps": good, "mean_batch": batch}


def test_markdown_shows_every_turn_and_the_mean():
    doc = {
        "measured_utc": "2026-11-22 01:00 UTC",
        "cpu": "Test CPU",
        "cores": 2,
        "budget_ms": 1000,
        "point_s": 20,
        "capacity_rps": 33.3,
        "wall_s": 120,
        "command": "python -m bench.loadgen.compare",
        "variants": [
            {"name": "a", "settings": {}, "root": str(REPO_ROOT)},
            {"name": "b", "settings": {"X": "1"}, "root": "/elsewhere"},
        ],
        "rows": [
            {"variant": "a", "load_x": 2.0, "rep": 0, **summary(1.0, 0.1, 50.0, 10.0)},
            {"variant": "a", "load_x": 2.0, "rep": 1, **summary(0.9, 0.3, 40.0, 20.0)},
            {"variant": "b", "load_x": 2.0, "rep": 0, **summary(0.98, 0.05, 55.0, float("nan"))},
        ],
    }
    text = markdown(doc)
    assert "| 2x | 1 | 100.0% / 10.0% / 50.0 / 10.0 | 98.0% / 5.0% / 55.0 / n/a |" in text
    assert "| 2x | 2 | 90.0% / 30.0% / 40.0 / 20.0 | - |" in text  # b has no second turn
    assert "| 2x | **mean** | 95.0% / 20.0% / 45.0 / 15.0 |" in text
    assert "Test CPU" in text and "server from `/elsewhere`" in text and "`a`: settings defaults" in text


def test_cli_usage_errors_are_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "bench.loadgen.compare", "--variant", "only:"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip() == "compare: give at least two --variant, with different names"


def test_two_variants_take_turns_on_real_servers(tmp_path):
    from bench.loadgen.compare import main

    docs = tmp_path / "doc.md"
    docs.write_text("<!-- compare:begin -->\n<!-- compare:end -->\n")
    out = tmp_path / "out"
    code = main(
        [
            "--model",
            "vit_tiny_test",
            "--api",
            "v2",
            "--payload",
            "uint8",
            "--loads",
            "1",
            "--reps",
            "1",
            "--point-s",
            "2",
            "--capacity-rps",
            "10",
            "--setting",
            "MAX_BATCH_SIZE=4",
            "--variant",
            "adaptive:",
            "--variant",
            "dense:POLICY=fixed:dense",
            "--out",
            str(out),
            "--docs",
            str(docs),
        ]
    )
    assert code == 0
    doc = json.loads((out / "compare.json").read_text())
    assert [(r["variant"], r["load_x"]) for r in doc["rows"]] == [("adaptive", 1.0), ("dense", 1.0)]
    dense = next(r for r in doc["rows"] if r["variant"] == "dense")
    assert dense["ok"] > 0 and set(dense["levels"]) == {"dense"}  # the variant's setting reached its server
    assert "| 1x | 1 |" in docs.read_text() and (out / "adaptive-1x-0" / "results.csv").is_file()


def test_overload_interleaved_sweep_on_real_servers(tmp_path):
    """Two policies' servers up at once, taking turns (the other paused), the capacity re-measured."""
    from bench.loadgen.overload import main

    out = tmp_path / "out"
    code = main(
        [
            "--model",
            "vit_tiny_test",
            "--api",
            "v2",
            "--payload",
            "uint8",
            "--loads",
            "0.5",
            "--point-s",
            "2",
            "--capacity-s",
            "1",
            "--concurrency",
            "2",
            "--policies",
            "adaptive,fixed:dense",
            "--interleave",
            "--recalibrate-s",
            "1",
            "--setting",
            "MAX_BATCH_SIZE=4",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    doc = json.loads((out / "overload.json").read_text())
    assert [(r["policy"], r["load_x"]) for r in doc["rows"]] == [("adaptive", 0.5), ("fixed:dense", 0.5)]
    assert all(r["ok"] > 0 and r["error"] == 0 for r in doc["rows"]), doc["rows"]
    assert set(next(r for r in doc["rows"] if r["policy"] == "fixed:dense")["levels"]) == {"dense"}
