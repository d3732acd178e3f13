"""`python -m bench {model,e2e,all,precision}`: measure, write JSON + markdown.

Heavy runs share the machine: run them under `flock /tmp/sait-bench.lock ...`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict, fields
from pathlib import Path

from bench.report import e2e_markdown, model_markdown, plot_e2e, precision_markdown
from bench.targets import e2e_checks, model_checks, targets_markdown

SUITES = ("model", "e2e", "all", "precision")


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _api_processes(text: str) -> tuple[str, ...]:
    values = _names(text)
    if not values or any(not (v == "auto" or (v.isdigit() and int(v) <= 64)) for v in values):
        raise argparse.ArgumentTypeError(f"expected a comma list of 0..64 or auto, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "suite",
        choices=SUITES,
        help="model: images/s, batch-1 latency, FLOP utilization; e2e: the "
        "server over loopback; all: model then e2e (with e2e / model-only ratios); precision: agreement",
    )
    p.add_argument("--model", default="deit_tiny_patch16_224")
    p.add_argument("--pretrained", action="store_true", help="pretrained weights (speed suites use random ones)")
    p.add_argument("--weights", default=None, help="precision: local weights file (default: pretrained)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false", help="eager only")
    p.add_argument("--batch-sizes", type=_ints, default=(1, 8, 32, 64, 128, 256))
    p.add_argument("--levels", type=_names, default=(), help="comma list (default: all; e2e: dense,l070,l050)")
    p.add_argument("--max-graph-batch", type=int, default=128)
    p.add_argument(
        "--compile",
        action="store_true",
        help="model: also time the torch.compile'd step (SAIT_COMPILE), eager vs compiled",
    )
    p.add_argument("--min-time-s", type=float, default=1.0, help="model: time per cell at least")
    p.add_argument("--max-calls", type=int, default=200, help="model: calls per cell and pass at most")
    p.add_argument("--rounds", type=int, default=1, help="model: passes over the grid, samples pooled (shared CPUs)")
    p.add_argument("--max-batch-size", type=int, default=32, help="e2e: SAIT_MAX_BATCH_SIZE")
    p.add_argument("--duration-s", type=float, default=5.0, help="e2e: seconds per ladder point")
    p.add_argument("--inputs", type=_names, default=("uint8", "jpeg"), help="e2e: uint8 and/or jpeg")
    p.add_argument("--p99-bound-ms", type=float, default=100.0, help="e2e: p99 a ladder point must keep")
    p.add_argument("--procs", type=int, default=2, help="e2e: load generator processes")
    p.add_argument(
        "--server-api-processes",
        dest="api_processes",
        type=_api_processes,
        default=(),
        help="e2e: SAIT_API_PROCESSES, a comma list (one server each, e.g. 0,1,2); default: the server's",
    )
    p.add_argument("--max-points", type=int, default=7, help="e2e: ladder points per level and input at most")
    p.add_argument("--start-rps", type=float, default=0.0, help="e2e: first rate (default a quarter of model-only)")
    p.add_argument("--max-inflight", type=int, default=4096, help="e2e: outstanding requests at most")
    p.add_argument("--precisions", type=_names, default=("bf16", "fp16"), help="precision: compared with fp32")
    p.add_argument("--images-per-set", type=int, default=0, help="precision: per image set (0 = all)")
    p.add_argument("--fp16-images-per-set", type=int, default=0, help="precision: fp16 subset (0 = same)")
    p.add_argument(
        "--time-limit-s", type=float, default=3600.0, help="precision: stop after this long, keep what ran (0 = none)"
    )
    p.add_argument("--out", type=Path, default=None, help="output path without extension (default out/bench/...)")
    return p


def _pick(cls, args: argparse.Namespace, **override):
    """A config dataclass from the parsed flags that it has (others keep their defaults)."""
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    values.update(override)
    return cls(**values)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = "python -m bench " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    out = args.out or Path("out/bench") / f"{args.suite}-{args.model}-{args.device}"
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.procs < 1 or args.max_points < 1 or args.p99_bound_ms <= 0 or args.duration_s <= 0:
        print(
            f"bench {args.suite}: --procs and --max-points must be >= 1, --p99-bound-ms and --duration-s > 0",
            file=sys.stderr,
        )
        return 2
    try:
        result, markdown = _run(args, command)
    except (FileNotFoundError, KeyError, ValueError, RuntimeError) as exc:
        print(f"bench {args.suite}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    result["command"] = command
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown + "\n")
    written = [out.with_suffix(".json"), out.with_suffix(".md")]
    if "e2e" in result:
        plot_e2e(out.with_suffix(".png"), result["e2e"])
        written.append(out.with_suffix(".png"))
    print(markdown)
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


def _run(args: argparse.Namespace, command: str) -> tuple[dict, str]:
    if args.suite == "precision":
        from bench.precision_bench import PrecisionBenchConfig, run_precision_bench

        cfg = _pick(PrecisionBenchConfig, args, batch_size=32)
        result = run_precision_bench(cfg)
        return result, precision_markdown(result, command)
    model_result = None
    parts, result = [], {}
    if args.suite in ("model", "all"):
        from bench.model_bench import ModelBenchConfig, run_model_bench

        model_result = run_model_bench(_pick(ModelBenchConfig, args))
        parts.append(model_markdown(model_result, command))
        result["model"] = model_result
    if args.suite in ("e2e", "all"):
        from bench.e2e_bench import E2EBenchConfig, run_e2e_bench

        levels = args.levels or E2EBenchConfig.levels
        e2e = run_e2e_bench(_pick(E2EBenchConfig, args, levels=levels), model_only=model_result)
        parts.append(e2e_markdown(e2e, command))
        result["e2e"] = e2e
    checks = (model_checks(model_result) if model_result is not None else []) + (
        e2e_checks(result["e2e"]) if "e2e" in result else []
    )
    result["targets"] = [{**asdict(c), "ok": c.ok} for c in checks]
    parts.append(targets_markdown(checks))
    if args.suite == "model":
        result = {**result["model"], "targets": result["targets"]}
    return result, "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
