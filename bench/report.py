"""Markdown tables for benchmark results (the JSON holds every number; these are the views)."""

from __future__ import annotations

from bench.environment import headline


def _table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return "n/a" if v != v else (f"{v:.3g}" if abs(v) < 10 else f"{v:,.1f}")
        return "–" if v is None else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _header(result: dict, title: str, command: str) -> list[str]:
    s = result["settings"]
    out = [f"### {title}", "", f"- Machine: {headline(result['environment'])}"]
    if command:
        out.append(f"- Command: `{command}`")
    keys = ("model", "precision", "batch_sizes", "max_batch_size", "procs", "p99_bound_ms", "duration_s")
    keys = [k for k in keys if k in s]
    out.append("- Settings: " + ", ".join(f"{k}={s[k]}" for k in keys))
    out += [f"- Note: {n}" for n in result.get("notes", [])]
    return out + [""]


MODES = ("eager", "compiled", "graphs", "graphs-compiled")


def model_markdown(result: dict, command: str = "") -> str:
    modes = sorted({r["mode"] for r in result["throughput"]}, key=MODES.index)
    by = {(r["mode"], r["level"], r["batch"]): r for r in result["throughput"]}
    levels = result["settings"]["levels"]
    dense = levels[0]
    out = _header(result, f"Model only: {result['settings']['model']}", command)
    if all("ops" in result["levels"][lv] for lv in levels):
        dense_ops = result["levels"][dense]["ops"]
        out += [
            "Operators per forward (ATen operators that compute, views left out; counted on the CPU in "
            "fp32 at batch 1 by `models.op_count`: on a GPU each is at least one kernel launch).",
            "",
            _table(
                ["level", "ops", "ops / dense"],
                [[lv, result["levels"][lv]["ops"], result["levels"][lv]["ops"] / dense_ops] for lv in levels],
            ),
            "",
        ]
    out += [
        "(a) images/s per level and batch size (`Runner.run` on a host uint8 batch: upload, normalize, "
        "model, softmax/top-k, download). *Speed-up* is over dense at the same batch and mode; *ideal* is "
        "dense GFLOPs / level GFLOPs; *of ideal* is their ratio (what the reducers' own work and the "
        "smaller matrices cost).",
        "",
    ]
    rows = []
    for level in levels:
        info = result["levels"][level]
        for b in result["settings"]["batch_sizes"]:
            row = [level, info["gflops"], b]
            for m in modes:
                row.append(by[(m, level, b)]["images_per_s"])
            for m in modes[1:]:
                row.append(by[(m, level, b)]["images_per_s"] / by[("eager", level, b)]["images_per_s"])
            best = modes[-1]
            speedup = by[(best, level, b)]["images_per_s"] / by[(best, dense, b)]["images_per_s"]
            ideal = result["levels"][dense]["gflops"] / info["gflops"]
            row += [speedup, ideal, speedup / ideal]
            rows.append(row)
    head = ["level", "GMACs/img", "batch", *[f"{m} img/s" for m in modes]]
    head += [f"{m}/eager" for m in modes[1:]] + [f"speed-up vs dense ({modes[-1]})", "ideal", "of ideal"]
    out += [_table(head, rows), ""]

    lat = {(r["mode"], r["level"]): r for r in result["latency"]}
    out += ["(b) batch-1 latency, ms (p50 / p90 of synchronized calls)", ""]
    rows = []
    for level in levels:
        row = [level]
        for m in modes:
            row += [lat[(m, level)]["p50_ms"], lat[(m, level)]["p90_ms"]]
        for m in modes[1:]:
            row.append(lat[(m, level)]["p50_ms"] / lat[("eager", level)]["p50_ms"])
        row.append(lat[(modes[-1], level)]["p50_ms"] / lat[(modes[-1], dense)]["p50_ms"])
        rows.append(row)
    head = (
        ["level"]
        + [f"{m} {p}" for m in modes for p in ("p50", "p90")]
        + [f"{m}/eager p50" for m in modes[1:]]
        + [f"p50 / dense ({modes[-1]})"]
    )
    out += [_table(head, rows), ""]

    peak = result["matmul_peak_tflops"]
    n = result["settings"]["matmul_n"]
    out += [
        f"(c) FLOP utilization: achieved FLOP/s (2 x GMACs x images/s) over the matmul peak measured in "
        f"this run ({n}x{n}x{n}: " + ", ".join(f"{k} {v:.3g} TFLOP/s" for k, v in peak.items()) + ")",
        "",
    ]
    prec = result["settings"]["precision"]
    rows = []
    for level in levels:
        for b in result["settings"]["batch_sizes"][-1:]:
            r = by[(modes[-1], level, b)]
            rows.append([level, b, modes[-1], r["achieved_tflops"], r["mfu_bf16_peak"], r.get(f"mfu_{prec}_peak")])
    out += [_table(["level", "batch", "mode", "achieved TFLOP/s", "of bf16 peak", f"of {prec} peak"], rows), ""]
    g = result.get("cuda_graphs")
    if g:
        out += [
            f"CUDA graphs: {g['graphs']} captured (buckets {g['buckets']}) in {g['capture_seconds']:.2f} s, "
            f"pool {g['graph_memory_bytes'] / 2**20:.0f} MiB.",
            "",
        ]
    return "\n".join(out)


def e2e_markdown(result: dict, command: str = "") -> str:
    s = result["settings"]
    out = _header(result, f"End to end: {s['model']}", command)
    out += [
        f"(d) open loop over loopback ({s['api']}), {s['procs']} generator processes, Poisson arrivals, "
        f"{s['duration_s']:g} s per point. *Highest rate*: the highest offered rate (requests/s = images/s, "
        f"one 224x224 image per request) at which every request was answered OK with p99 <= "
        f"{s['p99_bound_ms']:g} ms, from the scheduled send; *first too high*: the lowest rate tried above it, "
        f"and why it failed. Requests pin the level (`density`) with a {s['budget_ms']:g} ms budget. "
        f"Model-only: {s['model_only_source']}. *Gen lag*: the worst generator's send-lag p99 at the highest "
        "rate (a starved generator sends late).",
        "",
    ]
    rows = []
    for r in result["rows"]:
        at = r["at_highest"] or {}
        mo = r["model_only_images_per_s"]
        too_high = r["first_too_high_rps"]
        rows.append(
            [
                r["api_processes"],
                r["level"],
                r["input"],
                r["highest_rps"],
                at.get("p50_ms"),
                at.get("p99_ms"),
                at.get("mean_batch"),
                None if too_high is None else f"{too_high:,.0f} ({r['first_too_high_why']})",
                len(r["points"]),
                None if mo != mo else f"{mo:,.1f} (batch {r['model_only_batch']})",
                r["ratio_to_model_only"],
                at.get("generator_send_lag_p99_ms"),
                at.get("client_cpu_cores"),
            ]
        )
    head = ["API procs", "level", "input", f"highest rate req/s (p99 <= {s['p99_bound_ms']:g} ms)", "p50 ms"]
    head += ["p99 ms", "mean batch", "first too high req/s", "points", "model-only img/s", "e2e / model-only"]
    head += ["gen lag p99 ms", "gen CPU cores"]
    out += [_table(head, rows), ""]
    return "\n".join(out)


def plot_e2e(path, result: dict) -> None:
    """p99 against offered rate for every ladder, the bound as a line; failed points hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["settings"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for r in result["rows"]:
        pts = sorted(r["points"], key=lambda p: p["rate_rps"])
        label = f"API procs {r['api_processes']}, {r['level']}, {r['input']}"
        (line,) = ax.plot([p["rate_rps"] for p in pts], [p["p99_ms"] for p in pts], alpha=0.6, label=label)
        for p in pts:
            face = line.get_color() if p["passed"] else "none"
            ax.plot(p["rate_rps"], p["p99_ms"], "o", color=line.get_color(), markerfacecolor=face)
    ax.axhline(s["p99_bound_ms"], color="k", linestyle="--", linewidth=1, label=f"bound {s['p99_bound_ms']:g} ms")
    ax.set(xlabel="offered rate (requests/s, Poisson)", ylabel="p99 latency from scheduled send (ms)", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{s['model']}: ladder points (filled: all answered, p99 within the bound)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def precision_markdown(result: dict, command: str = "") -> str:
    out = _header(result, f"Precision: {result['settings']['model']}", command)
    out += [
        "Images: " + ", ".join(f"{k} {v}" for k, v in result["images"].items()) + ". Agreement = same top-1 "
        "as fp32 at the same level on the same input.",
        "",
    ]
    rows = [
        [
            r["level"],
            r["precision"],
            r["images"],
            f"{100 * r['agreement_with_fp32']:.2f} %",
            r["disagreements"],
            f"{100 * r['top1']:.2f} %",
            f"{100 * r['fp32_top1_same_images']:.2f} %",
        ]
        for r in result["rows"]
    ]
    out += [
        _table(["level", "precision", "images", "top-1 agreement with fp32", "disagree", "top-1", "fp32 top-1"], rows),
        "",
    ]
    passes = result.get("passes", [])
    if passes:
        out += [
            "Passes: "
            + "; ".join(
                f"{p['precision']} {p['seconds']:.1f} s (runner ready in {p['warmup_s']:.1f} s)" for p in passes
            )
            + ".",
            "",
        ]
    if result.get("not_measured"):
        out += [f"**Not measured**: {result['not_measured']}.", ""]
    return "\n".join(out)
