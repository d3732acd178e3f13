"""Turn Results into numbers (summary, time series) and files (JSON, CSV, PNG).

Definitions (also in docs/loadtest.md):
- throughput: OK responses per second of schedule; goodput: OK responses within their
  deadline per second (the deadline is judged by the client, from the scheduled send time);
- admitted: sent and not refused up front (ok + expired + error + timeout; sheds (429) and
  bad requests are not admitted); attainment: deadline met / admitted;
- latency percentiles are over OK responses.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.loadgen.client import OUTCOMES, Result

PERCENTILES = (50, 90, 99)


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def latency_stats(latencies_ms: Sequence[float]) -> dict:
    lat = np.asarray([x for x in latencies_ms if not math.isnan(x)], dtype=np.float64)
    stats = {f"p{q}_ms": _pct(lat, q) for q in PERCENTILES}
    stats["max_ms"] = float(lat.max()) if len(lat) else math.nan
    stats["mean_ms"] = float(lat.mean()) if len(lat) else math.nan
    return stats


def mean_batch(results: Sequence[Result]) -> float:
    """Mean size of the server batches that computed these requests (NaN when none reported).

    Each request reports the size b of its batch, so a batch of b single-image requests shows
    up b times: the count over the sum of 1/b is the mean per batch, not per request. Under
    overload it says whether the batcher kept its batches full (small batches cost up to
    three times as much per image on a CPU).
    """
    sizes = [r.batch_size for r in results if r.outcome == "ok" and r.batch_size > 0]
    return len(sizes) / sum(1.0 / b for b in sizes) if sizes else math.nan


def summarize(results: Sequence[Result], *, duration_s: float, offered_rps: float | None = None) -> dict:
    """Headline numbers of one run.

    Args:
        results: one per scheduled request.
        duration_s: the schedule's length (rates are per second of schedule).
        offered_rps: the nominal offered rate; defaults to scheduled requests / duration.
    """
    if duration_s <= 0:
        raise ValueError("duration_s must be > 0")
    counts = Counter(r.outcome for r in results)
    n = len(results)
    sent = n - counts["unsent"]
    admitted = counts["ok"] + counts["expired"] + counts["error"] + counts["timeout"]
    met = sum(r.deadline_met for r in results)
    ok = [r for r in results if r.outcome == "ok"]
    levels = Counter(r.level or "unknown" for r in ok)
    lags = np.asarray([r.send_lag_ms for r in results if r.outcome != "unsent"], dtype=np.float64)
    per_class = {}
    for cls in sorted({r.cls for r in results}):
        mine = [r for r in results if r.cls == cls]
        mine_admitted = sum(r.outcome in ("ok", "expired", "error", "timeout") for r in mine)
        mine_met = sum(r.deadline_met for r in mine)
        per_class[cls] = {
            "requests": len(mine),
            "ok": sum(r.outcome == "ok" for r in mine),
            "deadline_met": mine_met,
            "attainment": mine_met / mine_admitted if mine_admitted else math.nan,
            "levels": dict(Counter(r.level or "unknown" for r in mine if r.outcome == "ok")),
            **latency_stats([r.latency_ms for r in mine if r.outcome == "ok"]),
        }
    return {
        "requests": n,
        "duration_s": duration_s,
        "offered_rps": offered_rps if offered_rps is not None else n / duration_s,
        "sent": sent,
        "admitted": admitted,
        **{outcome: counts[outcome] for outcome in OUTCOMES},
        "deadline_met": met,
        "server_deadline_met": sum(r.server_deadline_met is True for r in ok),
        "throughput_rps": counts["ok"] / duration_s,
        "goodput_rps": met / duration_s,
        "attainment": met / admitted if admitted else math.nan,
        "shed_fraction": counts["shed"] / sent if sent else math.nan,
        "error_fraction": (counts["error"] + counts["timeout"]) / sent if sent else math.nan,
        **latency_stats([r.latency_ms for r in ok]),
        # Where the time went: the server's own total (handler entry to answer) and the rest
        # (network, the server's accept/event-loop backlog before its handler, client lag).
        **{f"server_{k}": v for k, v in latency_stats([r.server_total_ms for r in ok]).items()},
        **{f"outside_{k}": v for k, v in latency_stats([r.latency_ms - r.server_total_ms for r in ok]).items()},
        "levels": dict(sorted(levels.items())),
        "level_fractions": {k: v / len(ok) for k, v in sorted(levels.items())} if ok else {},
        "mean_batch": mean_batch(ok),
        "mean_batch_by_level": {
            lv: mean_batch([r for r in ok if (r.level or "unknown") == lv]) for lv in sorted(levels)
        },
        "send_lag_p99_ms": _pct(lags, 99),
        "send_lag_max_ms": float(lags.max()) if len(lags) else math.nan,
        "per_class": per_class,
    }


def generator_stats(results: Sequence[Result], *, cpu_s: float, wall_s: float) -> dict:
    """How well one generator process kept its schedule: a starved generator sends late (its
    send lag grows) or hits its in-flight cap (unsent), and its latencies then include the lag.

    Args:
        results: the requests this generator was given.
        cpu_s: its process CPU time while it ran the schedule.
        wall_s: the wall time of the same stretch.
    """
    lags = np.asarray([r.send_lag_ms for r in results if r.outcome != "unsent"], dtype=np.float64)
    return {
        "requests": len(results),
        "sent": int(len(lags)),
        "unsent": sum(r.outcome == "unsent" for r in results),
        "send_lag_p50_ms": _pct(lags, 50),
        "send_lag_p99_ms": _pct(lags, 99),
        "send_lag_max_ms": float(lags.max()) if len(lags) else math.nan,
        "cpu_cores": cpu_s / wall_s if wall_s > 0 else math.nan,
    }


def segment_summaries(results: Sequence[Result], bounds_s: Sequence[tuple[float, float]]) -> list[dict]:
    """One summary per stretch of the schedule (e.g. per step of a step profile)."""
    rows = []
    for start, end in bounds_s:
        mine = [r for r in results if start <= r.scheduled_s < end]
        rows.append({"start_s": start, "end_s": end, **summarize(mine, duration_s=end - start)})
    return rows


def time_series(results: Sequence[Result], *, window_s: float) -> list[dict]:
    """Per-window numbers, binned by scheduled send time."""
    if window_s <= 0:
        raise ValueError("window_s must be > 0")
    if not results:
        return []
    last = max(r.scheduled_s for r in results)
    bins: list[list[Result]] = [[] for _ in range(int(last // window_s) + 1)]
    for r in results:
        bins[int(r.scheduled_s // window_s)].append(r)
    rows = []
    for i, rs in enumerate(bins):
        ok = [r for r in rs if r.outcome == "ok"]
        counts = Counter(r.outcome for r in rs)
        row = {
            "t_s": i * window_s,
            "offered_rps": len(rs) / window_s,
            "throughput_rps": len(ok) / window_s,
            "goodput_rps": sum(r.deadline_met for r in rs) / window_s,
            **{o: counts[o] for o in OUTCOMES},
            **latency_stats([r.latency_ms for r in ok]),
            "mean_batch": mean_batch(ok),
            "levels": dict(Counter(r.level or "unknown" for r in ok)),
        }
        rows.append(row)
    return rows


def _jsonable(obj):
    """NaN/inf are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def write_json(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(_jsonable(doc), indent=2, sort_keys=False) + "\n")


def write_results_csv(path: Path, results: Sequence[Result]) -> None:
    rows = [r.row() for r in results]
    if not rows:
        path.write_text("")
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_series_csv(path: Path, series: Sequence[dict]) -> None:
    levels = sorted({lv for row in series for lv in row["levels"]})
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        head = [k for k in series[0] if k != "levels"] if series else []
        writer.writerow(head + [f"level_{lv}" for lv in levels])
        for row in series:
            writer.writerow([row[k] for k in head] + [row["levels"].get(lv, 0) for lv in levels])


def level_order(names) -> list[str]:
    """dense first, then lNNN from densest to sparsest, then anything else."""

    def key(name: str):
        if name == "dense":
            return (0, 0)
        if name.startswith("l") and name[1:].isdigit():
            return (1, -int(name[1:]))
        return (2, name)

    return sorted(set(names), key=key)


def plot_run(path: Path, series: Sequence[dict], *, title: str) -> None:
    """Latency percentiles and the level mix over time, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [row["t_s"] for row in series]
    fig, (ax_lat, ax_lvl) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms"):
        ax_lat.plot(t, [row[key] for row in series], label=key.removesuffix("_ms"))
    ax_lat.set_ylabel("latency from scheduled send (ms)")
    ax_lat.set_yscale("log")
    ax_lat.legend(loc="upper left", fontsize=8)
    ax_lat.grid(alpha=0.3)
    levels = level_order(lv for row in series for lv in row["levels"])
    bottoms = np.zeros(len(series))
    for lv in levels:
        frac = np.array([row["levels"].get(lv, 0) / max(sum(row["levels"].values()), 1) for row in series])
        ax_lvl.bar(t, frac, bottom=bottoms, width=(t[1] - t[0]) if len(t) > 1 else 1.0, align="edge", label=lv)
        bottoms += frac
    ax_lvl.set_ylabel("level served (fraction)")
    ax_lvl.set_xlabel("time (s)")
    if levels:
        ax_lvl.legend(loc="upper left", fontsize=7, ncol=len(levels))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_sweep(path: Path, rows: Sequence[dict], *, title: str) -> None:
    """Goodput and attainment against offered load, one line per policy.

    Args:
        rows: dicts with policy, offered_rps, goodput_rps, attainment (and optional load_x).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xkey = "load_x" if all("load_x" in r for r in rows) else "offered_rps"
    fig, (ax_g, ax_a) = plt.subplots(1, 2, figsize=(9, 3.6))
    for policy in dict.fromkeys(r["policy"] for r in rows):
        mine = sorted((r for r in rows if r["policy"] == policy), key=lambda r: r[xkey])
        x = [r[xkey] for r in mine]
        ax_g.plot(x, [r["goodput_rps"] for r in mine], marker="o", label=policy)
        ax_a.plot(
            x,
            [100 * (r["attainment"] if r["attainment"] is not None else math.nan) for r in mine],
            marker="o",
            label=policy,
        )
    xlabel = "offered load (x dense capacity)" if xkey == "load_x" else "offered load (req/s)"
    ax_g.set(xlabel=xlabel, ylabel="goodput (req/s within deadline)")
    ax_a.set(xlabel=xlabel, ylabel="deadline attainment of admitted (%)", ylim=(0, 101))
    for ax in (ax_g, ax_a):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_run(
    out_dir: Path, results: Sequence[Result], summary: dict, *, window_s: float, title: str, plot: bool = True
) -> dict[str, Path]:
    """Write summary.json, results.csv, timeseries.csv and (optionally) latency.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    series = time_series(results, window_s=window_s)
    paths = {
        "summary": out_dir / "summary.json",
        "results": out_dir / "results.csv",
        "series": out_dir / "timeseries.csv",
    }
    write_json(paths["summary"], {**summary, "series": series})
    write_results_csv(paths["results"], results)
    write_series_csv(paths["series"], series)
    if plot and series:
        paths["plot"] = out_dir / "latency.png"
        plot_run(paths["plot"], series, title=title)
    return paths


def _mean_batch_text(summary: dict) -> str:
    mean = summary.get("mean_batch", math.nan)
    return "n/a" if mean != mean else f"{mean:.1f}"


def format_summary(summary: dict) -> str:
    """A few readable lines for the terminal."""
    pct = lambda x: "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"
    ms = lambda x: "n/a" if math.isnan(x) else f"{x:.0f}"
    levels = ", ".join(f"{k} {100 * v:.0f}%" for k, v in summary["level_fractions"].items()) or "none"
    gens = summary.get("generators") or []
    per_gen = [
        f"generator {i}: sent {g['sent']}/{g['requests']}  send lag ms p50 {ms(g['send_lag_p50_ms'])}  "
        f"p99 {ms(g['send_lag_p99_ms'])}  max {ms(g['send_lag_max_ms'])}  CPU {g['cpu_cores']:.2f} cores"
        for i, g in enumerate(gens)
    ]
    return "\n".join(
        [
            f"requests {summary['requests']}  offered {summary['offered_rps']:.1f}/s  "
            f"throughput {summary['throughput_rps']:.1f}/s  goodput {summary['goodput_rps']:.1f}/s  "
            f"attainment {pct(summary['attainment'])}",
            f"ok {summary['ok']}  shed {summary['shed']}  expired {summary['expired']}  "
            f"bad_request {summary['bad_request']}  error {summary['error']}  timeout {summary['timeout']}  "
            f"unsent {summary['unsent']}",
            f"latency ms p50 {ms(summary['p50_ms'])}  p90 {ms(summary['p90_ms'])}  "
            f"p99 {ms(summary['p99_ms'])}  max {ms(summary['max_ms'])}  (send lag p99 "
            f"{ms(summary['send_lag_p99_ms'])})",
            f"levels served: {levels}  mean batch {_mean_batch_text(summary)}"
            + (f"  (generator CPU {summary['client_cpu_cores']:.2f} cores)" if "client_cpu_cores" in summary else ""),
            *(per_gen if len(per_gen) > 1 else []),
        ]
    )
