"""The overload sweep seen from the server's clock: separates the server from a starved client.

    python -m bench.loadgen.serverclock --out out/overload --docs docs/loadtest.md

On one machine the load generator shares the CPU with the server; at the highest loads it cannot
keep its schedule, and its latencies (measured from the scheduled send time, as they must be)
then include its own backlog. This table reads the points of the sweep in `<out>/overload.json`,
each point's `results.csv`, and adds what the server itself reported: the share of requests the
client sent more than 100 ms late, and the admitted requests whose answer the server timed
within their budget. Last, where in the point the misses fell: an admitted request that expired
or was answered late (client clock), counted in the point's first 2 s. A server that met the
start of a point with a stale latency model (it sat idle while the other policies ran, and the
host's speed drifted) misses there."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from bench.loadgen.docblock import replace_block

BEGIN, END = "<!-- serverclock:begin -->", "<!-- serverclock:end -->"
LATE_SEND_MS = 100.0
ADMITTED = ("ok", "expired", "error", "timeout")
START_S = 2.0


def point_row(results_csv: Path, point_s: float) -> dict:
    rows = list(csv.DictReader(results_csv.open()))
    sent = [r for r in rows if r["outcome"] != "unsent"]
    late = sum(float(r["send_lag_ms"]) > LATE_SEND_MS for r in sent)
    admitted = [r for r in rows if r["outcome"] in ADMITTED]
    met = sum(r["outcome"] == "ok" and r["server_deadline_met"] == "True" for r in admitted)
    missed = [r for r in admitted if r["deadline_met"] != "True"]
    return {
        "late_send": late / max(1, len(sent)),
        "server_attainment": met / max(1, len(admitted)),
        "server_goodput_rps": met / point_s,
        "missed": len(missed),
        "missed_at_start": sum(float(r["scheduled_s"]) < START_S for r in missed),
    }


def table(out: Path) -> str:
    """One row per point of the sweep that `out/overload.json` describes (older runs' folders
    in the same place are not read)."""
    sweep = json.loads((out / "overload.json").read_text())
    lines = [
        f"| policy | load | sent > {LATE_SEND_MS:.0f} ms late by the client | admitted met (server clock) | "
        f"met per s (server clock) | admitted missed (client clock) | of them in the first {START_S:g} s |",
        "|---|---|---|---|---|---|---|",
    ]
    lines.insert(
        0,
        f"The sweep of {sweep.get('measured_utc', '?')} on **{sweep.get('cpu', '?')}**, from its "
        f"`results.csv` files.\n",
    )
    for row in sweep["rows"]:
        name = f"{row['policy'].replace(':', '_')}-{row['load_x']:g}x"
        r = point_row(out / name / "results.csv", float(sweep["point_s"]))
        lines.append(
            f"| {row['policy']} | {row['load_x']:g}x | {r['late_send']:.0%} | {r['server_attainment']:.1%} | "
            f"{r['server_goodput_rps']:.1f} | {r['missed']} | {r['missed_at_start']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen.serverclock", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("out/overload"), help="the overload experiment's --out")
    p.add_argument("--docs", type=Path, help="markdown file to write the table into (between serverclock markers)")
    args = p.parse_args(argv)
    try:
        text = table(args.out)
    except (OSError, KeyError, ValueError) as exc:
        print(f"serverclock: {exc}", file=sys.stderr)
        return 2
    command = " ".join(["python -m bench.loadgen.serverclock", *(argv if argv is not None else sys.argv[1:])])
    print(text)
    if args.docs:
        replace_block(args.docs, f"{BEGIN}\nCommand: `{command}`\n\n{text}\n{END}", begin=BEGIN, end=END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
