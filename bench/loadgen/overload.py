"""The overload experiment: adaptive density against fixed-density serving, same machine.

    flock /tmp/sait-bench.lock python -m bench.loadgen.overload --docs docs/loadtest.md

1. Start the server at fixed:dense and measure its capacity with a closed loop.
2. For each policy (adaptive, fixed:dense, fixed at the sparsest level) start a fresh server
   and offer open-loop Poisson load from 0.5x to 3x that capacity, every request carrying the
   same latency budget and no density.
3. Write results (JSON), a sweep plot and a comparison table, and check the targets.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

from tqdm import tqdm

from bench.loadgen.client import Target
from bench.loadgen.docblock import cores, cpu_model, relpath, replace_block
from bench.loadgen.payloads import DEFAULT_IMAGE_DIR, PAYLOAD_KINDS, load_folder, synthetic
from bench.loadgen.report import plot_sweep, write_json, write_run
from bench.loadgen.server import ServerProcess
from bench.loadgen.session import budget_point, measure_capacity

BEGIN, END = "<!-- overload:begin -->", "<!-- overload:end -->"


def sparsest_policy(base_url: str, model: str) -> str:
    """`fixed:<level>` for the sparsest level the running server offers (settings take names)."""
    import httpx

    from bench.loadgen.report import level_order

    meta = httpx.get(f"{base_url}/v2/models/{model}", timeout=10).json()
    names = levels_of(meta.get("parameters") or {})
    if not names:
        raise RuntimeError(f"the server's /v2/models/{model} metadata lists no levels")
    return f"fixed:{level_order(names)[-1]}"


def levels_of(parameters: dict) -> list[str]:
    """Level names from v2 metadata parameters: "dense,l090,..." or a list."""
    raw = parameters.get("levels")
    if isinstance(raw, dict):  # model_configuration style {"string_value": "..."}
        raw = raw.get("string_value")
    if isinstance(raw, str):
        return [x.strip() for x in raw.split(",") if x.strip()]
    return [str(x) for x in raw] if isinstance(raw, list) else []


def card_top1(model: str) -> dict[str, float]:
    """Level -> top-1 from the packaged level card (empty when there is none)."""
    try:
        from models.card import LevelCard

        return {e.name: e.top1 for e in LevelCard.for_model(model).levels if e.top1 is not None}
    except (ImportError, OSError, ValueError):
        return {}


def served_top1(level_fractions: dict[str, float], top1: dict[str, float]) -> float:
    """Expected top-1 of the served mix, from the card (NaN when a level is not on it)."""
    if not level_fractions or any(lv not in top1 for lv in level_fractions):
        return math.nan
    return sum(frac * top1[lv] for lv, frac in level_fractions.items())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.loadgen.overload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="deit_tiny_patch16_224")
    p.add_argument("--api", choices=("v1", "v2"), default="v1")
    p.add_argument(
        "--payload",
        choices=PAYLOAD_KINDS,
        default="jpeg",
        help="jpeg: the server decodes; uint8: preprocessed tensors (needs --api v2)",
    )
    p.add_argument("--loads", default="0.5,1,1.5,2,2.5,3", help="offered loads in x dense capacity")
    p.add_argument("--point-s", type=float, default=20.0, help="seconds of load per point")
    p.add_argument("--budget-ms", type=float, default=1000.0, help="latency budget of every request")
    p.add_argument("--capacity-rps", type=float, help="skip the capacity measurement, use this")
    p.add_argument("--capacity-s", type=float, default=12.0, help="length of each closed-loop capacity run")
    p.add_argument(
        "--procs", type=int, default=1, help="generator processes per load point (for rates one process cannot send)"
    )
    # Enough clients that a full batch waits while one runs: with fewer, the closed loop makes
    # the batches (each client resends only when answered, and a batch starts after the max
    # queue delay with whatever has come), and understates what an open-loop overload gets.
    p.add_argument("--concurrency", default="16,32,64", help="closed-loop client counts tried for capacity")
    p.add_argument(
        "--policies",
        default="adaptive,fixed:dense,sparsest",
        help='comma list; "sparsest" = fixed at the sparsest level the server offers',
    )
    p.add_argument(
        "--interleave",
        action="store_true",
        help="run all policies' servers at once and alternate them at each load point",
    )
    p.add_argument(
        "--recalibrate-s",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --interleave: re-measure the dense capacity for this long before each load "
        "(with the best client count) and offer that load relative to it (0: off)",
    )
    p.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra SAIT_ setting for every server (e.g. MAX_BATCH_SIZE=16)",
    )
    p.add_argument("--images", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("out/overload"))
    p.add_argument("--docs", type=Path, default=None, help="markdown file to write the table into")
    p.add_argument("--plot", type=Path, default=None, help="sweep PNG (default <out>/sweep.png)")
    p.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="OVERLOAD_JSON",
        help="only re-write the table from a saved overload.json (no measurement)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.render is not None:
        # Re-write the docs block from a saved run, without measuring anything.
        doc = json.loads(args.render.read_text())
        doc.setdefault("measured_utc", _utc(args.render.stat().st_mtime))
        table = markdown(doc, args.plot or args.render.parent / "sweep.png", args.docs)
        if args.docs:
            replace_block(args.docs, table, begin=BEGIN, end=END)
        print(table)
        return 0
    try:
        loads = [float(x) for x in args.loads.split(",")]
        concurrencies = [int(x) for x in args.concurrency.split(",")]
        extra = dict(kv.split("=", 1) for kv in args.setting)
    except ValueError:
        print("overload: --loads and --concurrency are comma lists of numbers, --setting is KEY=VALUE", file=sys.stderr)
        return 2
    if args.payload == "uint8" and args.api != "v2":
        print("overload: --payload uint8 needs --api v2 (the native API takes encoded images)", file=sys.stderr)
        return 2
    if not 1 <= args.procs <= 64:
        print(f"overload: --procs must be 1..64, got {args.procs}", file=sys.stderr)
        return 2
    settings = {"MODEL": args.model, **extra}
    folder = args.images or DEFAULT_IMAGE_DIR
    payloads = (
        load_folder(folder, kind=args.payload, limit=64) if folder.is_dir() else synthetic(count=16, kind=args.payload)
    )
    target = Target(api=args.api, kind=args.payload, model=args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    bar = tqdm(unit="point", desc="overload sweep")

    def point(server: ServerProcess, policy: str, i: int, load_x: float, cap_rps: float) -> dict:
        results, summary = budget_point(
            base_url=server.url,
            target=target,
            rate_rps=load_x * cap_rps,
            duration_s=args.point_s,
            budget_ms=args.budget_ms,
            payloads=payloads,
            seed=i,
            procs=args.procs,
        )
        name = f"{policy.replace(':', '_')}-{load_x:g}x"
        write_run(args.out / name, results, summary, window_s=1.0, title=f"{policy} at {load_x:g}x")
        bar.update(1)
        time.sleep(2.0)  # let the queue drain before the next point
        return {"policy": policy, "load_x": load_x, "capacity_rps": cap_rps, **summary}

    def sweep(server: ServerProcess, policy: str) -> list[dict]:
        return [point(server, policy, i, load_x, cap_rps) for i, load_x in enumerate(loads)]

    # 1. On a fixed:dense server: the levels it offers and the dense capacity; then, when
    #    fixed:dense is one of the policies, its sweep on the same server (one start-up less).
    requested = args.policies.split(",")
    rows: list[dict] = []
    with ServerProcess(
        settings={**settings, "POLICY": "fixed:dense"}, log_path=_log(args.out, "fixed:dense")
    ) as server:
        sparsest = sparsest_policy(server.url, args.model)
        if args.capacity_rps:
            capacity = {"capacity_rps": args.capacity_rps, "measured": False}
        else:
            # The best closed-loop throughput over a few client counts: on a CPU a large batch
            # is not always the fastest per image, so one concurrency could understate it.
            trials = [
                measure_capacity(
                    base_url=server.url, target=target, payloads=payloads, concurrency=c, duration_s=args.capacity_s
                )
                for c in concurrencies
            ]
            capacity = {
                **max(trials, key=lambda t: t["capacity_rps"]),
                "measured": True,
                "trials": {t["concurrency"]: t["capacity_rps"] for t in trials},
            }
        cap_rps = capacity["capacity_rps"]
        policies = [sparsest if p == "sparsest" else p for p in requested]
        bar.total = len(policies) * len(loads)
        print(f"dense capacity {cap_rps:.1f} req/s; sparsest policy {sparsest}", flush=True)
        if args.interleave:
            # All servers up at once, each paused except while measured (an idle server times
            # probe batches; see bench.loadgen.server); at each load every policy runs back
            # to back, so background load that comes and goes hits all policies alike.
            with contextlib.ExitStack() as stack:
                server.pause()
                servers = {"fixed:dense": server}
                for p in policies:
                    if p not in servers:
                        servers[p] = stack.enter_context(
                            ServerProcess(settings={**settings, "POLICY": p}, log_path=_log(args.out, p))
                        )
                        servers[p].pause()
                for i, load_x in enumerate(loads):
                    now_rps = cap_rps
                    if args.recalibrate_s > 0 and capacity.get("measured"):
                        # The host's speed drifts by up to 2x within a sweep: a capacity from
                        # ten minutes ago can make "0.5x" a full load or "2x" a 4x one.
                        with server.turn():
                            now_rps = measure_capacity(
                                base_url=server.url,
                                target=target,
                                payloads=payloads,
                                concurrency=capacity["concurrency"],
                                duration_s=args.recalibrate_s,
                            )["capacity_rps"]
                            time.sleep(2.0)  # its queue drains before the first point
                    for p in policies:
                        with servers[p].turn():
                            rows.append(point(servers[p], p, i, load_x, now_rps))
        elif "fixed:dense" in policies:
            rows += sweep(server, "fixed:dense")

    # 2. Every other policy on a fresh server of its own.
    if not args.interleave:
        for policy in policies:
            if policy != "fixed:dense":
                with ServerProcess(settings={**settings, "POLICY": policy}, log_path=_log(args.out, policy)) as server:
                    rows += sweep(server, policy)
    bar.close()
    order = {p: i for i, p in enumerate(policies)}
    rows.sort(key=lambda r: (order[r["policy"]], r["load_x"]))

    top1 = card_top1(args.model)
    for row in rows:
        row["served_top1"] = served_top1(row["level_fractions"], top1)
    doc = {
        "command": "python -m bench.loadgen.overload " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu": cpu_model(),
        "model": args.model,
        "api": args.api,
        "payload": args.payload,
        "budget_ms": args.budget_ms,
        "point_s": args.point_s,
        "capacity": capacity,
        "policies": policies,
        "settings": settings,
        "wall_s": time.time() - started,
        "rows": rows,
        "measured_utc": _utc(time.time()),
        "interleave": args.interleave,
        "recalibrate_s": args.recalibrate_s if args.interleave else 0.0,
    }
    doc["targets"] = check_targets(rows, policies)
    write_json(args.out / "overload.json", doc)
    plot_path = args.plot or args.out / "sweep.png"
    plot_sweep(plot_path, rows, title=f"{args.model}, budget {args.budget_ms:g} ms, {doc['cpu']}")
    table = markdown(doc, plot_path, args.docs)
    if args.docs:
        replace_block(args.docs, table, begin=BEGIN, end=END)
    print(table)
    return 0


def _log(out: Path, policy: str) -> Path:
    """Each server's log beside the results (its latency profile explains the level choices)."""
    return out / f"server-{policy.replace(':', '_')}.log"


def check_targets(rows: list[dict], policies: list[str]) -> list[dict]:
    """The issue's targets, each with the measured value and pass/fail."""

    def at(policy: str, load_x: float) -> dict | None:
        return next((r for r in rows if r["policy"] == policy and r["load_x"] == load_x), None)

    checks = []
    ada2, dense2, ada05, ada3 = at("adaptive", 2.0), at("fixed:dense", 2.0), at("adaptive", 0.5), at("adaptive", 3.0)
    if ada2:
        checks.append(_check("adaptive at 2x: deadline met for admitted", ada2["attainment"], ">=", 0.99))
        checks.append(_check("adaptive at 2x: shed fraction", ada2["shed_fraction"], "<=", 0.05))
    if ada2 and dense2:
        ratio = ada2["goodput_rps"] / dense2["goodput_rps"] if dense2["goodput_rps"] else math.inf
        checks.append(_check("adaptive / fixed-dense goodput at 2x", ratio, ">=", 1.8))
        sparse2 = next(
            (
                r
                for r in rows
                if r["load_x"] == 2.0 and r["policy"].startswith("fixed:") and r["policy"] != "fixed:dense"
            ),
            None,
        )
        if sparse2:
            # Not a target: what serving every request at the sparsest level reaches. No policy
            # over the same levels should do much better, so it tells a controller that falls
            # short from a machine whose sparsest level cannot reach the target at all.
            bound = sparse2["goodput_rps"] / dense2["goodput_rps"] if dense2["goodput_rps"] else math.inf
            checks.append(
                {"target": f"(reference) {sparse2['policy']} / fixed-dense goodput at 2x", "value": bound, "pass": None}
            )
    if ada05:
        checks.append(
            _check("adaptive at 0.5x: dense fraction", ada05["level_fractions"].get("dense", 0.0), ">=", 0.95)
        )
    if ada3:  # the service issue's burst target
        checks.append(_check("adaptive at 3x: deadline met for admitted", ada3["attainment"], ">=", 0.95))
    return checks


def _check(name: str, value: float, op: str, bound: float) -> dict:
    ok = value >= bound if op == ">=" else value <= bound
    return {"target": f"{name} {op} {bound:g}", "value": value, "pass": bool(ok)}


def _recalibrated(doc: dict) -> str:
    """The per-load capacities, when the sweep re-measured them."""
    if not doc.get("recalibrate_s"):
        return ""
    per_load = {}
    for r in doc["rows"]:
        per_load.setdefault(r["load_x"], r.get("capacity_rps"))
    caps = ", ".join(f"{x:g}x: {c:.1f}" for x, c in sorted(per_load.items()) if c is not None)
    return (
        f", re-measured for {doc['recalibrate_s']:g} s before each load and the load offered "
        f"relative to that ({caps} req/s)"
    )


def _trials(capacity: dict) -> str:
    trials = capacity.get("trials") or {}
    return ", ".join(f"{c}: {rps:.1f}/s" for c, rps in trials.items()) or "given"


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def _top1(x) -> str:
    """Cards give top-1 in percent (79.83) or as a fraction (0.7983); show percent."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.1f}%" if x > 1 else f"{100 * x:.1f}%"


def _num(x, fmt: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def markdown(doc: dict, plot_path: Path, docs_path: Path | None) -> str:
    cap = doc["capacity"]["capacity_rps"]
    rel = plot_path.name if docs_path is None else relpath(plot_path, docs_path.parent)
    lines = [
        BEGIN,
        f"Measured {doc.get('measured_utc') or _utc(time.time())} on **{doc['cpu']}** "
        f"({cores()} cores), model `{doc['model']}`, API {doc['api']} with {doc.get('payload', 'jpeg')} payloads, "
        "every request with "
        f"`latency_budget_ms={doc['budget_ms']:g}` and no density, {doc['point_s']:g} s of Poisson "
        f"arrivals per point, one server per policy"
        f"{', policies interleaved per load' if doc.get('interleave') else ''} (settings {doc['settings']}). "
        f"Dense capacity (fixed:dense, best closed-loop throughput; clients: {_trials(doc['capacity'])}): "
        f"**{cap:.1f} req/s**{_recalibrated(doc)}. Whole run {doc['wall_s'] / 60:.1f} min.",
        "",
        f"Command: `flock /tmp/sait-bench.lock {doc['command']}`",
        "",
        "| policy | load | offered/s | goodput/s | attainment | shed | expired | p50 ms | p99 ms | p99 in server ms "
        "| mean batch | client lag p99 ms | client CPU cores | levels served | top-1 (card) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        levels = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["level_fractions"].items()) or "-"
        lines.append(
            f"| {r['policy']} | {r['load_x']:g}x | {r['offered_rps']:.1f} | {r['goodput_rps']:.1f} | "
            f"{_num(100 * r['attainment'] if r['attainment'] == r['attainment'] else math.nan, '.1f')}% | "
            f"{_num(100 * r['shed_fraction'], '.1f')}% | {r['expired']} | {_num(r['p50_ms'], '.0f')} | "
            f"{_num(r['p99_ms'], '.0f')} | {_num(r.get('server_p99_ms'), '.0f')} | "
            f"{_num(r.get('mean_batch'), '.1f')} | "
            f"{_num(r.get('send_lag_p99_ms'), '.0f')} | {_num(r.get('client_cpu_cores'), '.2f')} | {levels} | "
            f"{_top1(r['served_top1'])} |"
        )
    lines += ["", "| target | measured | result |", "|---|---|---|"]
    for c in doc["targets"]:
        verdict = "reference" if c["pass"] is None else "pass" if c["pass"] else "**FAIL**"
        lines.append(f"| {c['target']} | {_num(c['value'], '.3f')} | {verdict} |")
    lines += ["", f"![goodput and attainment against offered load]({rel})", END]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
