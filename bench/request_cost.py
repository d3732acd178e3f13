"""CPU time one request costs the server's event loop, the rest of the server and the client.

    flock /tmp/sait-bench.lock python -m bench.request_cost --cases v2:uint8,v1:jpeg

Why it matters: a density level shrinks the model's work, not the server's per-request work
(HTTP parsing, routing, the controller, metrics, building the response), which runs on the
event loop thread. On a CPU host that work shares the model's cores, and on a GPU host the one
event loop bounds how many requests per second a process can take whatever the device does
(the *ceiling* column: 1000 / event-loop ms). Measured as CPU time from /proc per thread, not
wall time, so a host that is slower for a while (other tenants, steal) changes it less than it
changes latencies.

Each case sends constant-rate open-loop requests (`--rate`, `--duration-s`) pinned to one level
with the `density` dial and a generous budget, to one server (`python -m service` on loopback);
the server threads' CPU is read before and after, and split into the event loop (the main
thread) and every other thread (the inference worker, torch's intra-op threads, the decode
pool). The first `--warmup-s` of each case are sent but not counted.

Before and after a change, in one run: `--variant NAME@CHECKOUT:` (bench.loadgen.compare's
variant syntax; `git worktree add /tmp/wt-base COMMIT` for the checkout, `NAME:K=V;...` for
settings) starts one server per variant, paused (SIGSTOP) while another is measured, and
`--rounds` lets the variants take turns at every case; the table gives each variant's median.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.environment import git_commit
from bench.loadgen.arrivals import RateProfile
from bench.loadgen.client import Target
from bench.loadgen.compare import (
    UsageError,
    Variant,
    add_variant_options,
    parse_variant,
    variant_notes,
    variant_records,
    write_block,
)
from bench.loadgen.docblock import cpu_model
from bench.loadgen.payloads import DEFAULT_IMAGE_DIR, Payload, PayloadError, load_folder, synthetic
from bench.loadgen.scenario import Dials, Scenario
from bench.loadgen.server import ServerError, ServerProcess, cpu_by_role, served_levels, server_threads
from bench.loadgen.session import LoadRun, execute

DEFAULT_BLOCK = "request-cost"
MEDIAN_FIELDS = (
    "event_loop_ms",
    "event_loop_sys_ms",
    "other_threads_ms",
    "client_ms",
    "model_ms",
    "engine_loop_ms",
    "engine_other_ms",
    "supervisor_ms",
)
CASES = ("v2:uint8", "v2:jpeg", "v1:jpeg")


@dataclass(frozen=True)
class CaseCost:
    """CPU milliseconds per answered request, for one (API, payload) case on one server variant."""

    variant: str
    api: str
    payload: str
    requests: int
    ok: int
    event_loop_ms: float
    event_loop_sys_ms: float
    other_threads_ms: float
    client_ms: float
    # Where the rest went (every figure CPU ms per answered request): the model (the inference
    # worker and its intra-op threads); with the engine in a process of its own, its event loop
    # and its other threads, and the supervisor. other_threads_ms is then the API processes'
    # threads besides their event loops.
    model_ms: float = 0.0
    engine_loop_ms: float = 0.0
    engine_other_ms: float = 0.0
    supervisor_ms: float = 0.0
    processes: int = 1

    @property
    def ceiling_rps(self) -> float:
        """Requests per second one event loop could take if it did nothing else."""
        return 1e3 / self.event_loop_ms if self.event_loop_ms > 0 else float("inf")

    @property
    def engine_ms(self) -> float:
        """The engine process's CPU beyond the model's own compute (0 with one process)."""
        return self.engine_loop_ms + self.engine_other_ms


def load_payloads(kind: str, images: Path | None) -> list[Payload]:
    """Request bodies of one kind ("uint8" or "jpeg"): the image folder's, else synthetic ones."""
    folder = images or DEFAULT_IMAGE_DIR
    return load_folder(folder, kind=kind, limit=32) if folder.is_dir() else synthetic(count=16, kind=kind)


def measure_case(
    server: ServerProcess,
    *,
    variant: str,
    api: str,
    payload: str,
    payloads: list[Payload],
    level: str,
    model: str,
    rate_rps: float,
    duration_s: float,
    warmup_s: float,
) -> CaseCost:
    dials = Dials(name="cost", density=level, latency_budget_ms=60_000.0)
    target = Target(api=api, kind=payload, model=model)

    def run(seconds: float, seed: int) -> tuple[dict, float]:
        spec = LoadRun(
            base_url=server.url,
            target=target,
            profile=RateProfile.constant(rate_rps, seconds),
            scenario=Scenario.single(dials),
            payloads=payloads,
            process="constant",
            seed=seed,
            progress=False,
            timeout_s=60.0,
        )
        cpu0 = time.process_time()
        _, summary = execute(spec)
        return summary, time.process_time() - cpu0

    if warmup_s > 0:
        run(warmup_s, seed=1)
    before = server_threads(server.pid)
    summary, client_s = run(duration_s, seed=2)
    after = server_threads(server.pid)
    spent = cpu_by_role(before, after)
    api_processes = len({pid for pid, _ in after if after[(pid, pid)][0] == "api_loop"})
    ok = int(summary["ok"])
    if ok == 0:
        raise ServerError(
            f"no request was answered OK in case {api}:{payload} ({summary['error']} errors, "
            f"{summary['bad_request']} bad requests): {server.log_tail(400)}"
        )
    per = 1e3 / ok
    return CaseCost(
        variant=variant,
        api=api,
        payload=payload,
        requests=int(summary["requests"]),
        ok=ok,
        event_loop_ms=spent["api_loop"] * per,
        event_loop_sys_ms=spent["api_loop_sys"] * per,
        other_threads_ms=spent["api_other"] * per,
        client_ms=client_s * per,
        model_ms=spent["model"] * per,
        engine_loop_ms=spent["engine_loop"] * per,
        engine_other_ms=spent["engine_other"] * per,
        supervisor_ms=spent["supervisor"] * per,
        processes=api_processes,
    )


def median_costs(costs: list[CaseCost]) -> list[CaseCost]:
    """One CaseCost per (variant, case): the median of its rounds, field by field (counts summed)."""
    groups: dict[tuple[str, str, str], list[CaseCost]] = {}
    for c in costs:
        groups.setdefault((c.variant, c.api, c.payload), []).append(c)
    out = []
    for (variant, api, payload), group in groups.items():
        med = {f: statistics.median(getattr(c, f) for c in group) for f in MEDIAN_FIELDS}
        out.append(
            CaseCost(
                variant=variant,
                api=api,
                payload=payload,
                requests=sum(c.requests for c in group),
                ok=sum(c.ok for c in group),
                processes=group[0].processes,
                **med,
            )
        )
    return out


def markdown(doc: dict) -> str:
    rounds = doc.get("rounds", 1)
    lines = [
        f"Measured {doc['measured_utc']} on **{doc['cpu']}**, model `{doc['model']}` at level `{doc['level']}`, "
        f"{doc['rate_rps']:g} req/s for {doc['duration_s']:g} s per case (constant rate, open loop; "
        f"{doc['warmup_s']:g} s warm-up not counted)"
        + (f", {rounds} rounds with the servers taking turns, medians" if rounds > 1 else "")
        + f", settings {doc['settings'] or '{}'}; commit {doc['commit']}.",
        "",
        f"Command: `{doc['command']}`",
        "",
    ]
    costs = median_costs([CaseCost(**c) for c in doc["cases"]])
    split = any(c.engine_loop_ms > 0 for c in costs)  # an engine process: its columns too
    if split:
        lines += [
            "| server | API | payload | requests | API processes | API event loops CPU ms/req | of which kernel "
            "| API other threads ms/req | engine event loop ms/req | engine other threads ms/req | model ms/req "
            "| client ms/req | one event loop's ceiling req/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    else:
        lines += [
            "| server | API | payload | requests | event loop CPU ms/req | of which kernel "
            "| other server threads ms/req | client ms/req | event-loop ceiling req/s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    for c in costs:
        if split:
            lines.append(
                f"| {c.variant} | {c.api} | {c.payload} | {c.ok}/{c.requests} | {c.processes or '0 (one process)'} | "
                f"{c.event_loop_ms:.2f} | {c.event_loop_sys_ms:.2f} | {c.other_threads_ms:.2f} | "
                f"{c.engine_loop_ms:.2f} | {c.engine_other_ms:.2f} | {c.model_ms:.1f} | {c.client_ms:.2f} | "
                f"{c.ceiling_rps:.0f} |"
            )
        else:
            lines.append(
                f"| {c.variant} | {c.api} | {c.payload} | {c.ok}/{c.requests} | {c.event_loop_ms:.2f} | "
                f"{c.event_loop_sys_ms:.2f} | {c.other_threads_ms:.1f} | {c.client_ms:.2f} | "
                f"{c.ceiling_rps:.0f} |"
            )
    if doc.get("variants"):
        lines.append("")
    lines += variant_notes(doc.get("variants", []))
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.request_cost",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("--model", default="deit_tiny_patch16_224")
    p.add_argument("--level", default="l040", help="level every request is pinned to (density dial)")
    p.add_argument("--cases", default="v2:uint8,v1:jpeg", help=f"comma list of API:payload from {', '.join(CASES)}")
    p.add_argument("--rate", type=float, default=20.0, help="requests per second (low enough that none queue long)")
    p.add_argument("--duration-s", type=float, default=20.0, help="measured seconds per case")
    p.add_argument("--warmup-s", type=float, default=3.0, help="unmeasured seconds before each case")
    p.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE", help="extra SAIT_ setting")
    p.add_argument("--rounds", type=int, default=1, help="turns of every variant at every case")
    p.add_argument("--images", type=Path, default=None, help=f"image folder (default {DEFAULT_IMAGE_DIR})")
    p.add_argument("--out", type=Path, default=Path("out/request_cost.json"))
    add_variant_options(p, default_block=DEFAULT_BLOCK)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown or not cases:
        print(
            f"request_cost: unknown case(s) {', '.join(unknown) or '(none)'}; use {', '.join(CASES)}", file=sys.stderr
        )
        return 2
    if args.rate <= 0 or args.duration_s <= 0 or args.warmup_s < 0:
        print("request_cost: --rate and --duration-s must be > 0, --warmup-s >= 0", file=sys.stderr)
        return 2
    try:
        settings = dict(kv.split("=", 1) for kv in args.setting)
    except ValueError:
        print(f"request_cost: --setting takes KEY=VALUE, got {args.setting}", file=sys.stderr)
        return 2
    settings.setdefault("MODEL", args.model)
    settings.setdefault("LEVELS", served_levels(args.level))
    try:
        variants = [parse_variant(v) for v in args.variant] or [Variant(name="this")]
    except UsageError as exc:
        print(f"request_cost: {exc}", file=sys.stderr)
        return 2
    if args.rounds < 1 or len({v.name for v in variants}) != len(variants):
        print("request_cost: --rounds must be >= 1 and variant names distinct", file=sys.stderr)
        return 2
    costs = []
    try:
        # Once per payload kind, not per case and round: loading and preprocessing is not measured.
        payloads = {kind: load_payloads(kind, args.images) for kind in {c.split(":")[1] for c in cases}}
        with contextlib.ExitStack() as stack:
            servers = {}
            for v in variants:
                servers[v.name] = stack.enter_context(ServerProcess(settings={**settings, **v.settings}, root=v.root))
                if len(variants) > 1:
                    servers[v.name].pause()  # until its turn: an idle server still times probe batches
            for _ in range(args.rounds):
                for case in cases:
                    api, payload = case.split(":")
                    for v in variants:
                        server = servers[v.name]
                        with server.turn() if server.paused else contextlib.nullcontext():
                            cost = measure_case(
                                server,
                                variant=v.name,
                                api=api,
                                payload=payload,
                                payloads=payloads[payload],
                                level=args.level,
                                model=args.model,
                                rate_rps=args.rate,
                                duration_s=args.duration_s,
                                warmup_s=args.warmup_s,
                            )
                        print(
                            f"{v.name} {case}: event loop {cost.event_loop_ms:.2f} CPU ms/req "
                            f"({cost.event_loop_sys_ms:.2f} kernel), other server threads "
                            f"{cost.other_threads_ms:.1f}, client {cost.client_ms:.2f} ({cost.ok}/{cost.requests} ok)",
                            flush=True,
                        )
                        costs.append(cost)
    except (ServerError, PayloadError, OSError) as exc:
        print(f"request_cost: {exc}", file=sys.stderr)
        return 1
    doc = {
        "measured_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_model(),
        "model": args.model,
        "level": args.level,
        "rate_rps": args.rate,
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "settings": {k: v for k, v in settings.items() if k != "MODEL"},
        "commit": git_commit() or "unknown",
        "command": "python -m bench.request_cost " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "rounds": args.rounds,
        "cases": [asdict(c) for c in costs],
        "variants": variant_records(variants),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    table = markdown(doc)
    if args.docs is not None:
        write_block(args.docs, args.block, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
