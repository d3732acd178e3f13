"""python -m bench.loadgen: open-loop load against a sait-serve server.

Examples:
    python -m bench.loadgen --rate 20 --duration-s 60 --budget-ms 200
    python -m bench.loadgen --profile 5:60@120 --api v2 --payload uint8 --out out/ramp
    python -m bench.loadgen --profile 10@30,20@30,40@30 --scenario bench/loadgen/scenarios/mixed.toml
    python -m bench.loadgen --procs 4 --rate 4000 --duration-s 20 --api v2 --payload uint8 --synthetic
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx

from bench.loadgen.arrivals import PROCESSES, ProfileError, RateProfile
from bench.loadgen.client import APIS, Target
from bench.loadgen.driver import TargetError, check_target
from bench.loadgen.payloads import DEFAULT_IMAGE_DIR, PAYLOAD_KINDS, PayloadError, load_folder, synthetic
from bench.loadgen.procs import GeneratorError
from bench.loadgen.report import format_summary, plot_sweep, segment_summaries, write_json, write_run
from bench.loadgen.scenario import DEFAULT_BUDGET_MS, Dials, Scenario, ScenarioError, load_scenario
from bench.loadgen.session import LoadRun, execute


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.loadgen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (loopback unless --allow-remote)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback target")
    p.add_argument("--api", choices=APIS, default="v1", help="v1 = native /v1/classify, v2 = KServe v2 infer")
    p.add_argument("--model", default="deit_tiny_patch16_224", help="served model name (v2 paths)")
    p.add_argument(
        "--payload",
        choices=PAYLOAD_KINDS,
        default="jpeg",
        help="jpeg = encoded images; uint8 = preprocessed [1,3,224,224] tensors (v2 only)",
    )
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        help=f"folder of images (default {DEFAULT_IMAGE_DIR} when present, else synthetic)",
    )
    p.add_argument("--synthetic", action="store_true", help="use random-noise images")
    p.add_argument("--max-images", type=int, default=64, help="images to load from the folder")
    load = p.add_argument_group("offered load")
    load.add_argument("--profile", help='rate segments "RATE@S" or "START:END@S", comma-joined (e.g. "10@30,5:50@60")')
    load.add_argument("--rate", type=float, help="constant rate in requests/s (with --duration-s)")
    load.add_argument("--duration-s", type=float, default=30.0, help="length of a --rate run")
    load.add_argument("--process", choices=PROCESSES, default=None, help="arrival process (default poisson)")
    load.add_argument("--max-requests", type=int, default=100_000, help="hard cap on requests")
    load.add_argument(
        "--max-inflight", type=int, default=512, help="most outstanding requests; more are counted unsent"
    )
    load.add_argument("--timeout-s", type=float, default=30.0, help="per-request client timeout")
    load.add_argument("--seed", type=int, default=0)
    load.add_argument(
        "--procs",
        type=int,
        default=1,
        help="generator processes sending the one schedule (request i from process i mod N; "
        "each may have --max-inflight/N outstanding); one merged summary",
    )
    dials = p.add_argument_group("dials (when no --scenario)")
    dials.add_argument("--scenario", type=Path, help="TOML/JSON scenario file with a weighted mix of dials")
    dials.add_argument("--budget-ms", type=float, help="latency_budget_ms sent with every request")
    dials.add_argument("--density", help="density sent with every request (e.g. 0.6 or l060)")
    dials.add_argument("--min-accuracy", type=float, help="min_accuracy sent with every request")
    dials.add_argument("--top-k", type=int, help="top_k sent with every request")
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, default=Path("out/loadgen"), help="directory for JSON/CSV/PNG")
    out.add_argument("--window-s", type=float, default=None, help="time-series window (default duration/60, >= 1 s)")
    out.add_argument("--no-plot", action="store_true")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _density(text: str | None) -> float | str | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def resolve(args: argparse.Namespace) -> LoadRun:
    """Turn parsed arguments into a LoadRun; raises the modules' ValueErrors on bad input."""
    base_url = check_target(args.url, allow_remote=args.allow_remote)
    if args.payload == "uint8" and args.api != "v2":
        raise ValueError("--payload uint8 needs --api v2 (the native API takes encoded images)")
    if args.scenario is not None:
        scenario = load_scenario(args.scenario)
        if any(v is not None for v in (args.budget_ms, args.density, args.min_accuracy, args.top_k)):
            raise ValueError("give dials either in --scenario or as flags, not both")
    else:
        scenario = Scenario.single(
            Dials(
                name="default",
                density=_density(args.density),
                latency_budget_ms=args.budget_ms,
                min_accuracy=args.min_accuracy,
                top_k=args.top_k,
            ),
            default_budget_ms=DEFAULT_BUDGET_MS,
        )
    if args.profile and args.rate is not None:
        raise ValueError("give either --profile or --rate, not both")
    if args.profile:
        profile = RateProfile.parse(args.profile)
    elif args.rate is not None:
        profile = RateProfile.constant(args.rate, args.duration_s)
    elif scenario.profile:
        profile = RateProfile.parse(scenario.profile)
    else:
        raise ValueError("say how much load: --rate R (with --duration-s) or --profile SPEC")
    if args.max_inflight < 1 or args.max_requests < 1 or args.timeout_s <= 0:
        raise ValueError("--max-inflight and --max-requests must be >= 1, --timeout-s > 0")
    if not 1 <= args.procs <= 64:
        raise ValueError(f"--procs must be 1..64, got {args.procs}")
    if args.synthetic or (args.images is None and not DEFAULT_IMAGE_DIR.is_dir()):
        payloads = synthetic(count=8, kind=args.payload, seed=args.seed)
    else:
        payloads = load_folder(args.images or DEFAULT_IMAGE_DIR, kind=args.payload, limit=args.max_images)
    return LoadRun(
        base_url=base_url,
        target=Target(api=args.api, kind=args.payload, model=args.model),
        profile=profile,
        scenario=scenario,
        payloads=payloads,
        process=args.process or scenario.process or "poisson",
        max_requests=args.max_requests,
        max_inflight=args.max_inflight,
        timeout_s=args.timeout_s,
        seed=args.seed,
        progress=not args.quiet,
        procs=args.procs,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run = resolve(args)
    except (ValueError, TargetError, ProfileError, ScenarioError, PayloadError) as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    try:
        results, summary = execute(run)
    except (OSError, ValueError, httpx.HTTPError, GeneratorError) as exc:  # e.g. server down, no v2 metadata
        # TargetError and GeneratorError messages already say what went wrong.
        own = isinstance(exc, (TargetError, GeneratorError))
        print(f"loadgen: {exc if own else f'{type(exc).__name__}: {exc}'}", file=sys.stderr)
        return 1
    window_s = args.window_s or max(1.0, run.profile.duration_s / 60)
    summary["config"] = {
        "url": run.base_url,
        "api": run.target.api,
        "payload": run.target.kind,
        "profile": args.profile or f"{args.rate}@{args.duration_s}",
        "process": run.process,
        "scenario": run.scenario.name,
        "seed": run.seed,
        "procs": run.procs,
    }
    paths = write_run(
        args.out,
        results,
        summary,
        window_s=window_s,
        plot=not args.no_plot,
        title=f"{run.target.api} {run.scenario.name} {summary['config']['profile']}",
    )
    if len(run.profile.segments) > 1:
        # A stepped or ramped profile: goodput and attainment against each segment's load.
        bounds, t = [], 0.0
        for seg in run.profile.segments:
            bounds.append((t, t + seg.duration_s))
            t += seg.duration_s
        segments = segment_summaries(results, bounds)
        write_json(args.out / "segments.json", {"segments": segments})
        paths["segments"] = args.out / "segments.json"
        if not args.no_plot:
            paths["load_plot"] = args.out / "load.png"
            plot_sweep(
                paths["load_plot"],
                [{"policy": "this run", **seg} for seg in segments],
                title="goodput and attainment per profile segment",
            )
    print(format_summary(summary))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
