"""The server-clock view of an overload sweep, from results.csv files."""

from __future__ import annotations

import csv
import json

from bench.loadgen.serverclock import main, point_row

FIELDS = ["outcome", "send_lag_ms", "server_deadline_met", "scheduled_s", "deadline_met"]


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows(dict(zip(FIELDS, r)) for r in rows)


def test_point_row_counts_late_sends_and_server_met(tmp_path):
    f = tmp_path / "adaptive-2x" / "results.csv"
    write(
        f,
        [
            ("ok", 5, "True", 0.5, "True"),
            ("ok", 150, "False", 1.5, "False"),
            ("expired", 300, "", 3.0, "False"),
            ("shed", 1, "", 0.1, "False"),
            ("unsent", 0, "", 4.0, "False"),
        ],
    )
    r = point_row(f, point_s=2.0)
    assert r["late_send"] == 0.5  # 2 of the 4 sent
    assert r["server_attainment"] == 1 / 3  # 1 met of 3 admitted (shed is not admitted)
    assert r["server_goodput_rps"] == 0.5
    assert (r["missed"], r["missed_at_start"]) == (2, 1)  # the late answer at 1.5 s; the expiry at 3 s is later


def test_cli_writes_the_sweeps_points_into_docs(tmp_path, capsys):
    out = tmp_path / "out"
    for name in ("fixed_dense-2x", "adaptive-1.5x", "adaptive-2x", "fixed_l050-2x"):  # l050: an older sweep's
        write(out / name / "results.csv", [("ok", 1, "True", 0.1, "True")])
    rows = [{"policy": p, "load_x": x} for p, x in (("adaptive", 1.5), ("adaptive", 2.0), ("fixed:dense", 2.0))]
    (out / "overload.json").write_text(json.dumps({"point_s": 1.0, "rows": rows}))
    docs = tmp_path / "doc.md"
    docs.write_text("intro\n")
    assert main(["--out", str(out), "--docs", str(docs)]) == 0
    text = docs.read_text()
    assert text.index("| adaptive | 1.5x") < text.index("| adaptive | 2x") < text.index("| fixed:dense | 2x")
    assert "fixed:l050" not in text and "| 1.0 | 0 | 0 |" in text
    assert "serverclock:begin" in text and "Command: `python -m bench.loadgen.serverclock" in text


def test_cli_missing_sweep_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
