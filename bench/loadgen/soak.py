"""Soak test: a fixed rate for a set time; server RSS over time, latency drift, errors.

    flock /tmp/sait-bench.lock python -m bench.loadgen.soak --rate 10 --duration-s 600
    python -m bench.loadgen.soak --short          # 60 s, for a quick check

Starts its own server (or watches one you name with --url and --pid), samples the server's
VmRSS once a second, and compares the first and last quarter after warm-up:
RSS growth = (median RSS of the last quarter - of the first) / first, p99 drift likewise.

On a shared host whose speed drifts (these 2-core machines: up to 2x within minutes) the
end-to-end p99 follows the host as much as the server. Beside it the soak reports each
quarter's median compute time per batch (what the server reports as `compute_ms`: the host's
speed, when the levels and batch sizes stay the same) and the p99 in units of it: a uniform
slowdown scales both and cancels, a leak or a growing queue raises the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from bench.loadgen.arrivals import RateProfile
from bench.loadgen.client import Result, Target
from bench.loadgen.docblock import cpu_model, relpath, replace_block
from bench.loadgen.driver import check_target
from bench.loadgen.payloads import DEFAULT_IMAGE_DIR, load_folder, synthetic
from bench.loadgen.report import latency_stats, mean_batch, time_series, write_json, write_run
from bench.loadgen.scenario import Dials, Scenario
from bench.loadgen.server import ServerProcess, rss_bytes
from bench.loadgen.session import LoadRun, execute_async, run_async

BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"


async def _sample_rss(pid: int, period_s: float, samples: list[tuple[float, int]], stop: asyncio.Event) -> None:
    start = time.perf_counter()
    while not stop.is_set():
        try:
            samples.append((time.perf_counter() - start, rss_bytes(pid)))
        except (OSError, ValueError):
            return  # the process is gone; the load side reports the errors
        try:
            await asyncio.wait_for(stop.wait(), timeout=period_s)
        except TimeoutError:
            pass


async def soak_async(run: LoadRun, pid: int) -> tuple[list[Result], dict, list[tuple[float, int]]]:
    samples: list[tuple[float, int]] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample_rss(pid, 1.0, samples, stop))
    try:
        results, summary = await execute_async(run)
    finally:
        stop.set()
        await sampler
    return results, summary, samples


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def _change(before: float, after: float) -> float:
    """Relative change; NaN when there is no before."""
    return _ratio(after - before, before)


def drift(results: list[Result], samples: list[tuple[float, int]], *, warmup_s: float, duration_s: float) -> dict:
    """First vs last quarter of the time after warm-up: RSS growth, p99 drift, errors."""
    span = duration_s - warmup_s
    first = (warmup_s, warmup_s + span / 4)
    last = (duration_s - span / 4, duration_s)

    def rss_in(window):
        values = [rss for t, rss in samples if window[0] <= t < window[1]]
        return statistics.median(values) if values else math.nan

    def ok_in(window):
        return [r for r in results if r.outcome == "ok" and window[0] <= r.scheduled_s < window[1]]

    def p99_in(window):
        return latency_stats([r.latency_ms for r in ok_in(window)])["p99_ms"]

    def compute_in(window):
        values = [r.compute_ms for r in ok_in(window) if not math.isnan(r.compute_ms)]
        return statistics.median(values) if values else math.nan

    def levels_in(window):
        counts = Counter(r.level or "unknown" for r in ok_in(window))
        return {level: n / max(1, counts.total()) for level, n in counts.most_common()}

    rss0, rss1, p0, p1 = rss_in(first), rss_in(last), p99_in(first), p99_in(last)
    c0, c1 = compute_in(first), compute_in(last)
    ratio0, ratio1 = _ratio(p0, c0), _ratio(p1, c1)
    rss_growth, p99_drift, corrected = _change(rss0, rss1), _change(p0, p1), _change(ratio0, ratio1)
    errors = sum(r.outcome in ("error", "timeout", "bad_request") for r in results)
    return {
        "warmup_s": warmup_s,
        "first_window_s": first,
        "last_window_s": last,
        "rss_first_mb": rss0 / 2**20,
        "rss_last_mb": rss1 / 2**20,
        "rss_max_mb": max((rss for _, rss in samples), default=math.nan) / 2**20,
        "rss_growth": rss_growth,
        "p99_first_ms": p0,
        "p99_last_ms": p1,
        "p99_drift": p99_drift,
        "compute_p50_first_ms": c0,
        "compute_p50_last_ms": c1,
        "host_slowdown": _change(c0, c1),
        "mean_batch_first": mean_batch(ok_in(first)),
        "mean_batch_last": mean_batch(ok_in(last)),
        "levels_first": levels_in(first),
        "levels_last": levels_in(last),
        "p99_per_compute_first": ratio0,
        "p99_per_compute_last": ratio1,
        "p99_drift_host_corrected": corrected,
        "host_corrected_below_10pct": bool(corrected < 0.10),  # beside the target, not the target
        "errors": errors,
        "targets": {
            "rss_growth < 5%": bool(rss_growth < 0.05),  # NaN (nothing measured) fails
            "p99_drift < 10%": bool(p99_drift < 0.10),
            "zero errors": errors == 0,
        },
    }


def plot_soak(path: Path, samples: list[tuple[float, int]], series: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rss, ax_lat) = plt.subplots(2, 1, figsize=(7, 4.5), sharex=True)
    ax_rss.plot([t for t, _ in samples], [rss / 2**20 for _, rss in samples])
    ax_rss.set_ylabel("server RSS (MiB)")
    ax_rss.grid(alpha=0.3)
    for key in ("p50_ms", "p99_ms"):
        ax_lat.plot([row["t_s"] for row in series], [row[key] for row in series], label=key.removesuffix("_ms"))
    ax_lat.set(xlabel="time (s)", ylabel="latency (ms)")
    ax_lat.legend(fontsize=8)
    ax_lat.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.loadgen.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rate", type=float, default=10.0, help="constant offered rate, req/s")
    p.add_argument("--duration-s", type=float, default=600.0)
    p.add_argument("--warmup-s", type=float, default=60.0, help="excluded from the drift comparison")
    p.add_argument("--short", action="store_true", help="60 s with 15 s warm-up")
    p.add_argument("--budget-ms", type=float, default=None, help="latency_budget_ms on every request")
    p.add_argument("--api", choices=("v1", "v2"), default="v1")
    p.add_argument("--model", default="deit_tiny_patch16_224")
    p.add_argument("--url", help="watch an already running server (needs --pid) instead of starting one")
    p.add_argument("--pid", type=int, help="pid of the server at --url, for RSS")
    p.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE", help="SAIT_ setting")
    p.add_argument("--out", type=Path, default=Path("out/soak"))
    p.add_argument("--docs", type=Path, default=None, help="markdown file to write the result into")
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default <out>/soak.png)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.short:
        args.duration_s, args.warmup_s = 60.0, 15.0
    if not 0 <= args.warmup_s < args.duration_s or args.rate <= 0:
        print("soak: need rate > 0 and 0 <= warmup-s < duration-s", file=sys.stderr)
        return 2
    if (args.url is None) != (args.pid is None):
        print("soak: --url and --pid go together", file=sys.stderr)
        return 2
    payloads = load_folder(DEFAULT_IMAGE_DIR, limit=64) if DEFAULT_IMAGE_DIR.is_dir() else synthetic(count=16)
    scenario = Scenario.single(Dials(name="soak", latency_budget_ms=args.budget_ms))
    settings = {"MODEL": args.model, **dict(kv.split("=", 1) for kv in args.setting)}
    server = None if args.url else ServerProcess(settings=settings).start()
    try:
        url = check_target(args.url) if args.url else server.url
        pid = args.pid or server.pid
        run = LoadRun(
            base_url=url,
            target=Target(api=args.api, model=args.model),
            profile=RateProfile.constant(args.rate, args.duration_s),
            scenario=scenario,
            payloads=payloads,
            process="poisson",
        )
        results, summary, samples = run_async(soak_async(run, pid))
    finally:
        if server is not None:
            server.stop()
    summary["soak"] = drift(results, samples, warmup_s=args.warmup_s, duration_s=args.duration_s)
    summary["rss_samples"] = [(round(t, 2), rss) for t, rss in samples]
    summary["command"] = "python -m bench.loadgen.soak " + " ".join(sys.argv[1:] if argv is None else argv)
    summary["cpu"] = cpu_model()
    window_s = max(5.0, args.duration_s / 40)
    paths = write_run(args.out, results, summary, window_s=window_s, title="soak", plot=False)
    plot_path = args.plot or args.out / "soak.png"
    plot_soak(
        plot_path,
        samples,
        time_series(results, window_s=window_s),
        f"soak {args.rate:g} req/s for {args.duration_s:g} s, {summary['cpu']}",
    )
    write_json(args.out / "soak.json", summary)
    text = markdown(summary, plot_path, args.docs)
    if args.docs:
        replace_block(args.docs, text, begin=BEGIN, end=END)
    print(text)
    print("wrote", ", ".join(str(p) for p in [*paths.values(), plot_path]))
    return 0


def _levels_text(shares: dict) -> str:
    return ", ".join(f"{level} {share:.0%}" for level, share in shares.items()) or "none"


def markdown(summary: dict, plot_path: Path, docs_path: Path | None) -> str:
    s = summary["soak"]
    rel = plot_path.name if docs_path is None else relpath(plot_path, docs_path.parent)
    verdict = lambda ok: "pass" if ok else "**FAIL**"
    t = s["targets"]
    return "\n".join(
        [
            BEGIN,
            f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on **{summary['cpu']}**: "
            f"{summary['requests']} requests at {summary['offered_rps']:.1f} req/s for {summary['duration_s']:g} s "
            f"(warm-up {s['warmup_s']:g} s excluded).",
            "",
            f"Command: `flock /tmp/sait-bench.lock {summary['command']}`",
            "",
            "| measure | first quarter | last quarter | change | target |",
            "|---|---|---|---|---|",
            f"| server RSS (MiB, median) | {s['rss_first_mb']:.1f} | {s['rss_last_mb']:.1f} | "
            f"{100 * s['rss_growth']:+.2f}% | < 5 %: {verdict(t['rss_growth < 5%'])} |",
            f"| p99 latency (ms) | {s['p99_first_ms']:.0f} | {s['p99_last_ms']:.0f} | "
            f"{100 * s['p99_drift']:+.1f}% | < 10 %: {verdict(t['p99_drift < 10%'])} |",
            f"| errors (error + timeout + bad request) | | | {s['errors']} | 0: {verdict(t['zero errors'])} |",
            f"| median compute per batch (ms): the host's speed | {s['compute_p50_first_ms']:.1f} | "
            f"{s['compute_p50_last_ms']:.1f} | {100 * s['host_slowdown']:+.1f}% | |",
            f"| p99 / median compute (host-speed corrected) | {s['p99_per_compute_first']:.2f} | "
            f"{s['p99_per_compute_last']:.2f} | {100 * s['p99_drift_host_corrected']:+.1f}% | "
            f"beside the target, < 10 %: {verdict(s['host_corrected_below_10pct'])} |",
            f"| levels served; mean batch | {_levels_text(s['levels_first'])}; {s['mean_batch_first']:.2f} | "
            f"{_levels_text(s['levels_last'])}; {s['mean_batch_last']:.2f} | | |",
            "",
            f"ok {summary['ok']}, shed {summary['shed']}, expired {summary['expired']}; "
            f"p50 {summary['p50_ms']:.0f} ms, p99 {summary['p99_ms']:.0f} ms over the whole run; "
            f"peak RSS {s['rss_max_mb']:.1f} MiB.",
            "",
            f"![server RSS and latency over the soak]({rel})",
            END,
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
