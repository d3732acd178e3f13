"""`python -m bench`: JSON and markdown out; bad input is one line and a non-zero exit."""

from __future__ import annotations

import json

import pytest

from bench.__main__ import main


def test_cli_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "model",
            "--model",
            "vit_tiny_test",
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--batch-sizes",
            "1",
            "--levels",
            "l070",
            "--min-time-s",
            "0",
            "--max-calls",
            "1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["command"].startswith("python -m bench model") and doc["settings"]["levels"] == ["l070"]
    assert "| l070 |" in out.with_suffix(".md").read_text()


def test_cli_bad_input_is_one_line_and_nonzero(tmp_path, capsys):
    rc = main(
        ["model", "--model", "vit_tiny_test", "--device", "cpu", "--levels", "l999", "--out", str(tmp_path / "x")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("bench model: KeyError") and "l999" in err[-1]
    with pytest.raises(SystemExit) as exc:
        main(["model", "--batch-sizes", "0"])
    assert exc.value.code == 2


def test_e2e_flags_are_checked_before_anything_runs(tmp_path, capsys):
    rc = main(["e2e", "--model", "vit_tiny_test", "--procs", "0", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--procs" in err[0]
    with pytest.raises(SystemExit) as exc:
        main(["e2e", "--server-api-processes", "1,two"])
    assert exc.value.code == 2
    assert "0..64 or auto" in capsys.readouterr().err
