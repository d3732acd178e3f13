"""Make a level card: every level measured on the evaluation sets, for one weights file.

    python -m models.make_card --model deit_tiny_patch16_224 --weights W.safetensors \
        --sets ../shared/assets/imagenet-samples ../shared/assets/imagenet-val --out W.safetensors.card.json
    python -m models.make_card --runs samples.json val.json --out models/cards/deit_tiny_patch16_224.json

`--sets` evaluates each folder (its labels.csv) with models.evaluate, with progress bars;
`--runs` combines `models.evaluate --json` runs made before. Top-level `levels` hold the
figures over all images of all runs (accuracy and agreement weighted by image count; images/s
= all images / all model seconds); `datasets` keeps each run's own table and command. The card
names the weights it was measured with (`weights_sha256`, models.fingerprint): the service
serves a card only with those weights. Without --weights, timm's pretrained weights (HF_HOME).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from models.machine import replace_block

_STATIC = ("name", "reducer", "tokens_per_block", "gflops", "gflops_ratio")
_WEIGHTS_KEYS = ("weights_sha256", "weights_source", "weights_file")
DEFAULT_SETS = ("../shared/assets/imagenet-samples", "../shared/assets/imagenet-val")


def combine(runs: list[dict]) -> dict:
    """One card from several evaluate runs of the same model and levels."""
    if not runs:
        raise ValueError("no runs to combine")
    model = runs[0]["model"]
    names = [r["name"] for r in runs[0]["levels"]]
    for run in runs:
        if run["model"] != model or [r["name"] for r in run["levels"]] != names:
            raise ValueError(f"runs differ in model or levels: {run.get('dataset')}")
    if len({run.get("weights_sha256") for run in runs}) > 1:
        raise ValueError("runs were measured with different weights files (weights_sha256 differs)")
    total = sum(run["images"] for run in runs)
    levels = []
    for i, name in enumerate(names):
        rows = [(run["images"], run["levels"][i]) for run in runs]
        first = rows[0][1]
        for _, row in rows:
            if any(row[k] != first[k] for k in _STATIC):
                raise ValueError(f"level {name} has a different schedule in different runs")
        entry = {k: first[k] for k in _STATIC}
        for key, digits in (("top1", 2), ("top5", 2), ("agreement", 4)):
            entry[key] = round(sum(n * row[key] for n, row in rows) / total, digits)
        seconds = sum(n / row["images_per_s"] for n, row in rows)
        entry["images_per_s"] = round(total / seconds, 2)
        levels.append(entry)
    return {
        "model": model,
        **{k: runs[0][k] for k in _WEIGHTS_KEYS if runs[0].get(k)},
        "device": runs[0]["device"],
        "batch_size": runs[0]["batch_size"],
        "images": total,
        "commands": [run["command"] for run in runs],
        "levels": levels,
        "datasets": {
            run["dataset"]: {"images": run["images"], "command": run["command"], "levels": run["levels"]}
            for run in runs
        },
    }


def measure_sets(
    model_name: str, weights: str | None, sets: list[str], *, levels: str, batch_size: int, device: str, command: str
) -> list[dict]:
    """One `models.evaluate`-style run per folder (its labels.csv), all with the same loaded model."""
    from models.device import resolve_device
    from models.evaluate import UsageError, evaluate_set, parse_levels, run_record
    from models.loader import load_model

    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    dev = resolve_device(device)
    model = load_model(model_name, weights=weights)
    names = parse_levels(levels, model)
    runs = []
    for folder in sets:
        rows, n = evaluate_set(
            model, folder, Path(folder) / "labels.csv", levels=names, batch_size=batch_size, device=dev
        )
        record = run_record(
            model=model_name, weights=weights, device=dev, images=folder, n=n, batch_size=batch_size, command=command
        )
        runs.append(record | {"levels": rows})
    return runs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m models.make_card", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--sets", nargs="+", help=f"evaluation folders, each with a labels.csv (e.g. {' '.join(DEFAULT_SETS)})"
    )
    src.add_argument("--runs", nargs="+", help="JSON files written by models.evaluate --json")
    p.add_argument("--model", default="deit_tiny_patch16_224", help="timm model name (with --sets)")
    p.add_argument("--weights", help="weights file (with --sets; default: timm's pretrained weights via HF_HOME)")
    p.add_argument("--levels", default="all", help="all, or a comma list such as dense,l060 (with --sets)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", required=True, help="card to write: W.card.json beside the weights, or models/cards/")
    p.add_argument("--plot", help="also write a PNG of top-1 and agreement against GFLOPs")
    p.add_argument("--docs", help="also render the card's table into this markdown file (between card markers)")
    return p


def main(argv: list[str] | None = None) -> int:
    from models.device import DeviceUnavailable
    from models.evalset import EvalSetError
    from models.weights import WeightsError

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    command = "python -m models.make_card " + shlex.join(argv)
    try:
        if not Path(args.out).resolve().parent.is_dir():
            raise ValueError(f"output folder does not exist: {Path(args.out).parent}")
        if args.runs:
            runs = [json.loads(Path(f).read_text()) for f in args.runs]
        else:
            runs = measure_sets(
                args.model,
                args.weights,
                args.sets,
                levels=args.levels,
                batch_size=args.batch_size,
                device=args.device,
                command=command,
            )
        card = combine(runs)
    except (OSError, ValueError, KeyError, TypeError, DeviceUnavailable, EvalSetError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(args.out).write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {args.out}: {card['images']} images, weights sha256 {card.get('weights_sha256', 'none')}")
    if args.plot:
        from models.evaluate import plot

        sets = " + ".join(card["datasets"])
        plot(card["levels"], args.plot, title=f"{card['model']} on {sets} ({card['images']} images, {card['device']})")
    if args.docs:
        replace_block(Path(args.docs), card_markdown(card, args.out, command), begin=CARD_BEGIN, end=CARD_END)
    return 0


CARD_BEGIN, CARD_END = "<!-- card:begin -->", "<!-- card:end -->"


def card_markdown(card: dict, path: str, command: str) -> str:
    """The card's combined table, with where and how it was measured."""
    dense = next(lv for lv in card["levels"] if lv["name"] == "dense")
    rows = [
        "| level | reducer | GFLOPs | ratio | top-1 | Δ top-1 | top-5 | agreement | images/s | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in card["levels"]:
        rows.append(
            f"| {lv['name']} | {lv['reducer']} | {lv['gflops']:.3f} | {lv['gflops_ratio']:.3f} | {lv['top1']:.2f} | "
            f"{lv['top1'] - dense['top1']:+.2f} | {lv['top5']:.2f} | {lv['agreement']:.3f} | "
            f"{lv['images_per_s']:.1f} | "
            f"{lv['images_per_s'] / dense['images_per_s']:.2f}x |"
        )
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    head = (
        f"Rendered from `{path}` ({card['images']} images: "
        f"{', '.join(card['datasets'])}; {card['device']}; batch {card['batch_size']}) by "
        f"`{command}`, {stamp}; the evaluation commands are recorded in the card."
    )
    return "\n".join([CARD_BEGIN, head, "", *rows, CARD_END])


if __name__ == "__main__":
    sys.exit(main())
