"""Paired comparison of server variants (settings, or another checkout) at the same loads.

    flock /tmp/sait-bench.lock python -m bench.loadgen.compare --api v2 --payload uint8 \\
        --variant "share0.8:OVERLOAD_WAIT_SHARE=0.8" --variant "share0.6:OVERLOAD_WAIT_SHARE=0.6" \\
        --loads 2,3 --reps 3 --capacity-rps 33.3

On a shared machine whose speed drifts by up to 2x between minutes, two variants measured one
after the other differ by more than most changes do. So every variant's server is up at once,
paused (SIGSTOP) except during its own turn, and at each load the variants take turns,
`--reps` times: each row of the table compares variants that ran seconds apart. A variant is
`NAME:KEY=VALUE;KEY=VALUE` (SAIT_ settings without the prefix), or `NAME@CHECKOUT:...` to run
the server from another checkout of the repository (a `git worktree` of an older commit:
before and after a change). Every request carries the same budget and no density, as in the
overload experiment; its capacity is measured on a fixed:dense server of the base settings
unless `--capacity-rps` is given.

Writes `<out>/compare.json`, each point's run directory, and a markdown table (into `--docs`
between markers when given). The loads are offered in x the dense capacity.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from bench.loadgen.client import Target
from bench.loadgen.docblock import cores, cpu_model, replace_block
from bench.loadgen.payloads import DEFAULT_IMAGE_DIR, PAYLOAD_KINDS, load_folder, synthetic
from bench.loadgen.report import write_json, write_run
from bench.loadgen.server import REPO_ROOT, ServerProcess
from bench.loadgen.session import budget_point, measure_capacity

BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"


class UsageError(ValueError):
    """A command-line value that cannot be used (one readable line)."""


@dataclass(frozen=True)
class Variant:
    name: str
    settings: dict[str, str] = field(default_factory=dict)
    root: Path | None = None  # another checkout; None: this one


def parse_variant(spec: str) -> Variant:
    """`NAME[@CHECKOUT]:K=V;K=V` -> Variant."""
    head, sep, body = spec.partition(":")
    name, _, root = head.partition("@")
    if not name or (not sep and "=" in head):
        raise UsageError(f"variant {spec!r}: expected NAME[@CHECKOUT]:KEY=VALUE;...")
    settings = {}
    for pair in filter(None, body.split(";")):
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"variant {name!r}: {pair!r} is not KEY=VALUE")
        settings[key.strip().upper().removeprefix("SAIT_")] = value.strip()
    checkout = Path(root) if root else None
    if checkout is not None and not (checkout / "service" / "__main__.py").is_file():
        raise UsageError(f"variant {name!r}: {checkout} is not a checkout of this repository (no service/__main__.py)")
    return Variant(name=name, settings=settings, root=checkout)


# -- shared by the tools that run a checkout of another commit beside this one ----------------------
def add_variant_options(p: argparse.ArgumentParser, *, default_block: str) -> None:
    """--variant (repeatable; none: one server from this checkout), --docs and --block."""
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME[@CHECKOUT]:K=V;...",
        help="a server variant (repeat; default: one server from this checkout)",
    )
    p.add_argument("--docs", type=Path, default=None, help="markdown file to write the table into")
    p.add_argument(
        "--block",
        default=default_block,
        help="name of the marked block in --docs that the table replaces (<!-- NAME:begin --> ... end)",
    )


def variant_records(variants: list[Variant]) -> list[dict]:
    """What a results file says of each variant: name, checkout and its commit, settings."""
    from bench.environment import git_commit

    return [
        {
            "name": v.name,
            "root": str(v.root) if v.root else None,
            "settings": v.settings,
            "commit": git_commit(v.root) if v.root else None,
        }
        for v in variants
    ]


def variant_notes(records: list[dict]) -> list[str]:
    """One markdown line per variant record: where its code came from, its settings."""
    lines = []
    for v in records:
        where = f"checkout {v['root']} (commit {v.get('commit') or 'unknown'})" if v["root"] else "this checkout"
        lines.append(f"- `{v['name']}`: {where}, settings {v['settings'] or '{}'}")
    return lines


def write_block(path: Path, block: str, table: str) -> None:
    """Put `table` between `<!-- block:begin -->` and `<!-- block:end -->` in `path`."""
    begin, end = f"<!-- {block}:begin -->", f"<!-- {block}:end -->"
    replace_block(path, f"{begin}\n{table}{end}", begin=begin, end=end)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.loadgen.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--variant",
        action="append",
        required=True,
        metavar="NAME[@CHECKOUT]:K=V;...",
        help="a server variant (repeat; at least two)",
    )
    p.add_argument("--model", default="deit_tiny_patch16_224")
    p.add_argument("--api", choices=("v1", "v2"), default="v2")
    p.add_argument("--payload", choices=PAYLOAD_KINDS, default="uint8")
    p.add_argument("--loads", default="2,3", help="offered loads in x dense capacity")
    p.add_argument("--reps", type=int, default=3, help="turns of every variant at every load")
    p.add_argument("--point-s", type=float, default=20.0, help="seconds of load per point")
    p.add_argument("--budget-ms", type=float, default=1000.0)
    p.add_argument("--capacity-rps", type=float, help="skip the capacity measurement, use this")
    p.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="SAIT_ setting for every server, the capacity server too",
    )
    p.add_argument("--images", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("out/compare"))
    p.add_argument("--docs", type=Path, default=None, help="markdown file to write the table into")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        variants = [parse_variant(v) for v in args.variant]
        loads = [float(x) for x in args.loads.split(",")]
        base = {"MODEL": args.model, **dict(kv.split("=", 1) for kv in args.setting)}
        if len(variants) < 2 or len({v.name for v in variants}) != len(variants):
            raise UsageError("give at least two --variant, with different names")
        if args.reps < 1 or args.point_s <= 0 or any(x <= 0 for x in loads):
            raise UsageError("--reps, --point-s and every load must be positive")
        if args.payload == "uint8" and args.api != "v2":
            raise UsageError("--payload uint8 needs --api v2")
    except (UsageError, ValueError) as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    folder = args.images or DEFAULT_IMAGE_DIR
    payloads = (
        load_folder(folder, kind=args.payload, limit=64) if folder.is_dir() else synthetic(count=16, kind=args.payload)
    )
    target = Target(api=args.api, kind=args.payload, model=args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rows: list[dict] = []
    if args.capacity_rps:
        cap_rps = args.capacity_rps
    else:
        with ServerProcess(
            settings={**base, "POLICY": "fixed:dense"}, log_path=args.out / "server-capacity.log"
        ) as dense:
            cap_rps = max(
                measure_capacity(base_url=dense.url, target=target, payloads=payloads, concurrency=c, duration_s=12.0)[
                    "capacity_rps"
                ]
                for c in (32, 64)
            )
    print(f"dense capacity {cap_rps:.1f} req/s", flush=True)
    with contextlib.ExitStack() as stack:
        servers = {}
        for v in variants:
            servers[v.name] = stack.enter_context(
                ServerProcess(settings={**base, **v.settings}, root=v.root, log_path=args.out / f"server-{v.name}.log")
            )
            servers[v.name].pause()  # until its turn (see bench.loadgen.server)
        bar = tqdm(total=args.reps * len(loads) * len(variants), unit="point", desc="compare")
        for rep in range(args.reps):
            for load_x in loads:
                for v in variants:
                    with servers[v.name].turn():
                        results, summary = budget_point(
                            base_url=servers[v.name].url,
                            target=target,
                            rate_rps=load_x * cap_rps,
                            duration_s=args.point_s,
                            budget_ms=args.budget_ms,
                            payloads=payloads,
                            seed=rep,
                        )
                        time.sleep(2.0)  # let the queue drain before the next point
                    write_run(
                        args.out / f"{v.name}-{load_x:g}x-{rep}",
                        results,
                        summary,
                        window_s=1.0,
                        title=f"{v.name} at {load_x:g}x, turn {rep + 1}",
                    )
                    rows.append({"variant": v.name, "load_x": load_x, "rep": rep, **summary})
                    bar.update(1)
        bar.close()
    doc = {
        "command": "python -m bench.loadgen.compare " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu": cpu_model(),
        "cores": cores(),
        "capacity_rps": cap_rps,
        "budget_ms": args.budget_ms,
        "point_s": args.point_s,
        "settings": base,
        "wall_s": time.time() - started,
        "measured_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "variants": [{"name": v.name, "settings": v.settings, "root": str(v.root or REPO_ROOT)} for v in variants],
        "rows": rows,
    }
    write_json(args.out / "compare.json", doc)
    table = markdown(doc)
    if args.docs:
        replace_block(args.docs, table, begin=BEGIN, end=END)
    print(table)
    return 0


def markdown(doc: dict) -> str:
    """Per load: every turn's attainment / shed / goodput / mean batch per variant, and the means."""
    names = [v["name"] for v in doc["variants"]]
    lines = [
        BEGIN,
        f"Measured {doc['measured_utc']} on **{doc['cpu']}** ({doc['cores']} cores), budget "
        f"{doc['budget_ms']:g} ms, {doc['point_s']:g} s of Poisson arrivals per point, dense capacity "
        f"{doc['capacity_rps']:.1f} req/s, variants taking turns at each load. Whole run {doc['wall_s'] / 60:.1f} min.",
        "",
        f"Command: `flock /tmp/sait-bench.lock {doc['command']}`",
        "",
        "Each cell: deadline met for admitted / shed / goodput req/s / mean batch.",
        "",
        "| load | turn | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    by = {(r["variant"], r["load_x"], r["rep"]): r for r in doc["rows"]}
    for load_x in sorted({r["load_x"] for r in doc["rows"]}):
        reps = sorted({r["rep"] for r in doc["rows"] if r["load_x"] == load_x})
        for rep in reps:
            cells = [_cell(by.get((n, load_x, rep))) for n in names]
            lines.append(f"| {load_x:g}x | {rep + 1} | " + " | ".join(cells) + " |")
        means = []
        for n in names:
            mine = [by[(n, load_x, rep)] for rep in reps if (n, load_x, rep) in by]
            means.append(
                _cell(
                    {
                        k: statistics.fmean(r[k] for r in mine)
                        for k in ("attainment", "shed_fraction", "goodput_rps", "mean_batch")
                    }
                    if mine
                    else None
                )
            )
        lines.append(f"| {load_x:g}x | **mean** | " + " | ".join(means) + " |")
    lines.append("")
    for v in doc["variants"]:
        lines.append(
            f"- `{v['name']}`: settings {v['settings'] or 'defaults'}"
            + (f", server from `{v['root']}`" if v["root"] != str(REPO_ROOT) else "")
        )
    lines.append(END)
    return "\n".join(lines)


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    att = r["attainment"]
    att_text = "n/a" if att != att else f"{100 * att:.1f}%"
    batch = r.get("mean_batch", float("nan"))
    return f"{att_text} / {100 * r['shed_fraction']:.1f}% / {r['goodput_rps']:.1f} / " + (
        "n/a" if batch != batch else f"{batch:.1f}"
    )


if __name__ == "__main__":
    sys.exit(main())
