"""The probe of issue 20's attacks: its table, its usage errors, and a real short run."""

from __future__ import annotations

import json

from bench.hardening_probe import CASES, ISSUE, describe, main, markdown


def test_describe_reads_json_errors_and_plain_answers():
    assert describe(400, "application/json", b'{"error": "bad dial"}') == "400 bad dial"
    assert (
        describe(400, "text/plain", b"Invalid HTTP request received.")
        == "400 text/plain: Invalid HTTP request received."
    )
    assert describe(0, "reset", b"") == "reset"


def test_every_case_has_what_the_issue_saw_and_a_table_row():
    doc = {
        "measured_utc": "2026-12-04 18:00 UTC",
        "cpu": "AMD EPYC",
        "command": "python -m bench.hardening_probe --variant a: --variant b:",
        "variants": [
            {"name": "a", "root": None, "settings": {}},
            {"name": "b", "root": "/x", "commit": "abc", "settings": {}},
        ],
        "results": {"a": {k: "200 | ok" for k, _, _ in CASES}, "b": {k: "400 no" for k, _, _ in CASES}},
    }
    table = markdown(doc)
    assert set(ISSUE) == {k for k, _, _ in CASES}
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(CASES) and all("200 / ok" in r and "400 no" in r for r in rows)
    assert "AMD EPYC" in table and "checkout /x (commit abc)" in table


def test_usage_errors_exit_2(capsys):
    assert main(["--cases", "nope"]) == 2
    assert "unknown case" in capsys.readouterr().err
    assert main(["--variant", "a:", "--variant", "a:"]) == 2


def test_a_short_real_run(tmp_path):
    out = tmp_path / "probe.json"
    docs = tmp_path / "doc.md"
    docs.write_text("# x\n\n<!-- hardening-probe:begin -->\nold\n<!-- hardening-probe:end -->\n")
    assert main(["--cases", "digits_5000,url_64k,host", "--out", str(out), "--docs", str(docs)]) == 0
    results = json.loads(out.read_text())["results"]["this"]
    assert results["digits_5000"].startswith("400 a number") and "40 digits" in results["digits_5000"]
    assert results["url_64k"].startswith("414 ") and "application/json" in results["url_64k"]
    assert results["host"].startswith("400 ")
    text = docs.read_text()
    assert "old" not in text and "a 64 KB URL" in text
