"""The adaptive-vs-fixed measurement on a tiny random ViT and a few generated images."""

from __future__ import annotations

import csv
import json

import numpy as np
from PIL import Image

from models.train.adaptive_eval import main


def _folder(root, n):
    root.mkdir()
    rng = np.random.default_rng(1)
    with (root / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "class_index"])
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (240, 260, 3), dtype=np.uint8)).save(root / f"{i}.png")
            w.writerow([f"{i}.png", i])
    return root


def test_adaptive_eval_rows_limits_and_check(tmp_path):
    a, b = _folder(tmp_path / "a", 3), _folder(tmp_path / "b", 2)
    out = tmp_path / "r.json"
    rc = main(
        [
            "--model",
            "vit_tiny_test",
            "--sets",
            f"{a},{b}",
            "--thresholds",
            "0,1",
            "--batch-size",
            "2",
            "--check",
            "2",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--json",
            str(out),
            "--plot",
            str(tmp_path / "p.png"),
        ]
    )
    assert rc == 0
    result = json.loads(out.read_text())
    rows = {r["name"]: r for r in result["combined"]["rows"]}
    assert result["combined"]["images"] == 5 and set(result["sets"]) == {"a", "b"}
    # Threshold 1 routes every image to dense; 0 routes every image to the cheapest level.
    assert rows["adaptive@1"]["level_share"]["dense"] == 1.0 and rows["adaptive@1"]["agreement"] == 1.0
    assert rows["adaptive@1"]["gflops"] == rows["dense"]["gflops"]
    assert rows["adaptive@0"]["gflops"] == min(r["gflops"] for r in rows.values())
    assert all(r["check_match"] == 1.0 for s in result["sets"].values() for r in s["rows"] if r["kind"] == "adaptive")
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert list((tmp_path / "cache").glob("*.safetensors"))  # decoded once, cached


def test_adaptive_eval_bad_folder_is_one_line(tmp_path, capsys):
    assert main(["--model", "vit_tiny_test", "--sets", str(tmp_path / "none"), "--cache-dir", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_adaptive_rows_are_compared_with_the_fixed_levels_joined_by_lines():
    from models.train.adaptive_eval import versus_fixed

    rows = [
        {"name": "dense", "kind": "fixed", "gflops": 1.0, "top1": 80.0, "agreement": 1.0},
        {"name": "l050", "kind": "fixed", "gflops": 0.5, "top1": 70.0, "agreement": 0.8},
        {"name": "a", "kind": "adaptive", "gflops": 0.75, "top1": 76.0, "agreement": 0.88},  # line: 75, 0.9
        {"name": "b", "kind": "adaptive", "gflops": 0.4, "top1": 69.0, "agreement": 0.8},  # below: held at l050
    ]
    versus_fixed(rows)
    assert rows[2]["top1_vs_fixed"] == 1.0 and abs(rows[2]["agreement_vs_fixed"] + 0.02) < 1e-12
    assert rows[3]["top1_vs_fixed"] == -1.0 and rows[3]["agreement_vs_fixed"] == 0.0
    assert "top1_vs_fixed" not in rows[0]


def test_adaptive_eval_routes_only_among_the_levels_asked(tmp_path):
    a = _folder(tmp_path / "a", 2)
    out = tmp_path / "r.json"
    argv = ["--model", "vit_tiny_test", "--sets", str(a), "--thresholds", "0", "--check", "0"]
    assert main([*argv, "--levels", "l050", "--cache-dir", str(tmp_path / "c"), "--json", str(out)]) == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())["combined"]["rows"]}
    # Threshold 0 takes the cheapest level it may choose: l050, not the model's cheapest (f040).
    assert rows["adaptive@0"]["level_share"] == {"l050": 1.0, "dense": 0.0}
    assert rows["adaptive@0"]["gflops"] == rows["l050"]["gflops"] > min(r["gflops"] for r in rows.values())


def test_adaptive_eval_unknown_level_is_one_line(tmp_path, capsys):
    a = _folder(tmp_path / "a", 1)
    assert main(["--model", "vit_tiny_test", "--sets", str(a), "--levels", "l999", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown level 'l999'" in err and len(err.strip().splitlines()) == 1
