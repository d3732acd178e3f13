"""The overload sweep seen from the server's clock: separates the server from a starved client.

    python -m service.loadgen.serverclock --out out/overload --docs docs/loadtest.md

On one machine the load generator shares the CPU with the server; at the highest loads it
cannot keep its schedule, and its latencies (measured from the scheduled send time, as they
must be) then include its own backlog. This table reads each point's `results.csv` and adds
what the server itself reported: the share of requests the client sent more than 100 ms late,
and the admitted requests whose answer the server timed within their budget.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from service.loadgen.docblock import replace_block

BEGIN, END = "<!-- serverclock:begin -->", "<!-- serverclock:end -->"
LATE_SEND_MS = 100.0
ADMITTED = ("ok", "expired", "error", "timeout")


def point_row(results_csv: Path, point_s: float) -> dict:
    rows = list(csv.DictReader(results_csv.open()))
    sent = [r for r in rows if r["outcome"] != "unsent"]
    late = sum(float(r["send_lag_ms"]) > LATE_SEND_MS for r in sent)
    admitted = [r for r in rows if r["outcome"] in ADMITTED]
    met = sum(r["outcome"] == "ok" and r["server_deadline_met"] == "True" for r in admitted)
    return {"late_send": late / max(1, len(sent)), "server_attainment": met / max(1, len(admitted)),
            "server_goodput_rps": met / point_s}


def table(out: Path, point_s: float) -> str:
    lines = [f"| policy | load | sent > {LATE_SEND_MS:.0f} ms late by the client | admitted met (server clock) | "
             "met per s (server clock) |", "|---|---|---|---|---|"]
    dirs = sorted((d for d in out.iterdir() if (d / "results.csv").is_file()),
                  key=lambda d: (d.name.rsplit("-", 1)[0], float(d.name.rsplit("-", 1)[1].rstrip("x"))))
    if not dirs:
        raise FileNotFoundError(f"no <policy>-<load>x/results.csv under {out}")
    for d in dirs:
        policy, load = d.name.rsplit("-", 1)
        r = point_row(d / "results.csv", point_s)
        lines.append(f"| {policy.replace('_', ':', 1)} | {load} | {r['late_send']:.0%} | {r['server_attainment']:.1%} | "
                     f"{r['server_goodput_rps']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.loadgen.serverclock", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("out/overload"), help="the overload experiment's --out")
    p.add_argument("--point-s", type=float, default=20.0, help="seconds of load per point (the sweep's --point-s)")
    p.add_argument("--docs", type=Path, help="markdown file to write the table into (between serverclock markers)")
    args = p.parse_args(argv)
    try:
        text = table(args.out, args.point_s)
    except (OSError, KeyError, ValueError) as exc:
        print(f"serverclock: {exc}", file=sys.stderr)
        return 2
    command = " ".join(["python -m service.loadgen.serverclock", *(argv if argv is not None else sys.argv[1:])])
    print(text)
    if args.docs:
        replace_block(args.docs, f"{BEGIN}\nCommand: `{command}`\n\n{text}\n{END}", begin=BEGIN, end=END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
