"""Targets are computed from measured cells."""

from __future__ import annotations

import pytest

from bench.targets import e2e_checks, model_checks, targets_markdown


def test_targets_are_computed_from_measured_cells(model_result):
    # The CPU fixture measures batches 1 and 2 eager: no batch >= 64 and no graphs, so the
    # model checks are batch-1 latency and operators; a copy relabelled as batch 64 adds one
    # speed-up check.
    latency, ops = model_checks(model_result)
    lat = {r["level"]: r["p50_ms"] for r in model_result["latency"]}
    assert latency.value == pytest.approx(lat["l050"] / lat["dense"]) and latency.at_most and latency.threshold == 1.05
    levels = model_result["levels"]
    assert ops.value == pytest.approx(levels["l050"]["ops"] / levels["dense"]["ops"]) and ops.threshold == 1.3
    assert ops.ok == (ops.value <= 1.3) and ("<= 1.3" in targets_markdown([ops]))
    relabelled = {
        **model_result,
        "settings": {**model_result["settings"], "batch_sizes": (64,)},
        "throughput": [{**t, "batch": 64} for t in model_result["throughput"] if t["batch"] == 2],
    }
    (check, *_) = model_checks(relabelled)
    by = {t["level"]: t["images_per_s"] for t in relabelled["throughput"]}
    ideal = model_result["levels"]["dense"]["gflops"] / model_result["levels"]["l050"]["gflops"]
    assert check.value == pytest.approx(by["l050"] / by["dense"] / ideal) and check.threshold == 0.85
    row = {"api_processes": "default", "level": "dense", "input": "jpeg", "highest_rps": 1.0}
    row.update(ratio_to_model_only=0.75, model_only_batch=2)
    e2e = {"settings": {"model": "vit_tiny_test", "p99_bound_ms": 100.0}, "rows": [row]}
    (c,) = e2e_checks(e2e)
    assert c.value == 0.75 and c.threshold == 0.70 and c.ok and "batch 2" in c.name
    assert ("| yes |" if c.ok else "| NO |") in targets_markdown([c])
    # deit_tiny with UINT8 inputs: the rate itself is a target too, when the bound is the target's.
    tiny = {"settings": {"model": "deit_tiny_patch16_224", "p99_bound_ms": 100.0}}
    ratio, rate = e2e_checks({**tiny, "rows": [{**row, "input": "uint8", "highest_rps": 6500.0}]})
    assert ratio.threshold == 0.90 and not ratio.ok and rate.value == 6500.0 and rate.ok
    loose = {"settings": {**tiny["settings"], "p99_bound_ms": 250.0}, "rows": [{**row, "input": "uint8"}]}
    assert len(e2e_checks(loose)) == 1  # a looser bound than the target's says nothing about it
