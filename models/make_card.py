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
        "commands": list(dict.fromkeys(run["command"] for run in runs)),  # one make_card run covers both sets
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
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--sets", nargs="+", help=f"evaluation folders, each with a labels.csv (e.g. {' '.join(DEFAULT_SETS)})"
    )
    src.add_argument("--runs", nargs="+", help="JSON files written by models.evaluate --json")
    src.add_argument("--add-speed", metavar="CARD", help="measure the speed and add it to this card (no --sets/--runs)")
    p.add_argument("--model", default="deit_tiny_patch16_224", help="timm model name (with --sets)")
    p.add_argument("--weights", help="weights file (with --sets; default: timm's pretrained weights via HF_HOME)")
    p.add_argument("--levels", default="all", help="all, or a comma list such as dense,l060 (with --sets)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu", help="where to evaluate and time")
    p.add_argument("--out", help="card to write: W.card.json beside the weights, or models/cards/")
    p.add_argument("--plot", help="also write a PNG of top-1 and agreement against GFLOPs")
    p.add_argument("--docs", help="also render the card's table into this markdown file (between card markers)")
    p.add_argument(
        "--speed", action="store_true", help="also measure every level's speed on --device and record it in the card"
    )
    p.add_argument("--precision", default="auto", help="speed: auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16")
    p.add_argument("--speed-batch-sizes", default="1,8,32", help="speed: comma list (the batches the server forms)")
    p.add_argument("--speed-min-time-s", type=float, default=0.5, help="speed: time per cell and round at least")
    p.add_argument("--speed-rounds", type=int, default=3, help="speed: interleaved rounds, samples pooled")
    return p


def main(argv: list[str] | None = None) -> int:
    from models.device import DeviceUnavailable
    from models.evalset import EvalSetError
    from models.weights import WeightsError

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    command = "python -m models.make_card " + shlex.join(argv)
    try:
        if args.add_speed:
            out = Path(args.add_speed)
            card = json.loads(out.read_text())
            add_speed(card, args, command)
        else:
            if not ((args.sets or args.runs) and args.out):
                raise ValueError("give --sets or --runs, and --out (or --add-speed CARD)")
            out = Path(args.out)
            if not out.resolve().parent.is_dir():
                raise ValueError(f"output folder does not exist: {out.parent}")
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
            add_ops(card)
            if args.speed:
                add_speed(card, args, command)
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        RuntimeError,
        DeviceUnavailable,
        EvalSetError,
        WeightsError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out.write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {out}: {card['images']} images, weights sha256 {card.get('weights_sha256', 'none')}")
    if args.plot:
        from models.evaluate import plot

        sets = " + ".join(card["datasets"])
        plot(card["levels"], args.plot, title=f"{card['model']} on {sets} ({card['images']} images, {card['device']})")
    if args.docs:
        replace_block(Path(args.docs), card_markdown(card, str(out), command), begin=CARD_BEGIN, end=CARD_END)
    return 0


def _model_for(card: dict):
    """The card's model with its levels' schedules (random weights: counts and speed do not
    depend on them), checked against the card's token counts."""
    from models.loader import load_model

    model = load_model(card["model"], pretrained=False).eval()
    for row in card["levels"]:
        level = model.level(row["name"])
        if list(level.tokens_per_block) != list(row["tokens_per_block"]):
            raise ValueError(f"level {row['name']} of the card has another schedule than the code's")
    return model


def add_ops(card: dict) -> None:
    """Each level's operator count (models.op_count: fp32, batch 1, on the CPU), in place."""
    from models.op_count import count_level_ops

    model = _model_for(card)
    for row in card["levels"]:
        row["ops"] = count_level_ops(model, row["name"]).ops


def add_speed(card: dict, args: argparse.Namespace, command: str) -> None:
    """Measure every level's images/s on args.device and record it under speed[<device kind>]."""
    import torch

    from models.device import resolve_device
    from models.machine import cpu_model
    from models.speed import device_kind, measure_speed

    device = resolve_device(args.device)
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    batch_sizes = tuple(int(b) for b in args.speed_batch_sizes.split(","))
    model = _model_for(card).to(device)
    levels = tuple(row["name"] for row in card["levels"])
    ips = measure_speed(
        model,
        levels,
        device=device,
        precision=precision,
        batch_sizes=batch_sizes,
        min_time_s=args.speed_min_time_s,
        rounds=args.speed_rounds,
    )
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{cpu_model()} ({torch.get_num_threads()} threads)"
    )
    card.setdefault("speed", {})[device_kind(device)] = {
        "device": name,
        "precision": precision,
        "cuda_graphs": device.type == "cuda",
        "torch": torch.__version__,
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command,
        "images_per_s": {lv: {str(b): round(v, 2) for b, v in row.items()} for lv, row in ips.items()},
    }


CARD_BEGIN, CARD_END = "<!-- card:begin -->", "<!-- card:end -->"


def speed_markdown(card: dict) -> list[str]:
    """Per device kind: each level's speed-up over dense per batch size, and the levels offered."""
    from models.card import LevelCard, choose_levels, decisive_batch, device_speeds

    parsed = LevelCard.from_dict(card)
    out = []
    for kind, speed in device_speeds(parsed).items():
        table = card["speed"][kind]
        batches = speed.batch_sizes
        batch = decisive_batch(speed, max(batches))
        offered = choose_levels(parsed.levels, speed, batch=batch)
        out += [
            "",
            f"Speed on `{kind}` ({table['device']}, {table['precision']}, torch {table['torch']}, "
            f"{table['measured']}): images/s over dense per batch size, by `{table['command']}`. Offered there "
            f"(`models.card.choose_levels` at batch {batch}): {', '.join(offered)}.",
            "",
            "| level | " + " | ".join(f"batch {b}" for b in batches) + " | offered |",
            "|---|" + "---|" * (len(batches) + 1),
        ]
        for e in parsed.levels:
            cells = [speed.speedup(e.name, b) for b in batches]
            out.append(
                f"| {e.name} | "
                + " | ".join("–" if c is None else f"{c:.2f}x" for c in cells)
                + f" | {'yes' if e.name in offered else 'no'} |"
            )
    return out


def card_markdown(card: dict, path: str, command: str) -> str:
    """The card's combined table, with where and how it was measured."""
    dense = next(lv for lv in card["levels"] if lv["name"] == "dense")
    rows = [
        "| level | reducer | GFLOPs | ratio | top-1 | Δ top-1 | top-5 | agreement | images/s | speed-up | ops |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in card["levels"]:
        ops = f"{lv['ops']} ({lv['ops'] / dense['ops']:.2f}x)" if lv.get("ops") and dense.get("ops") else "–"
        rows.append(
            f"| {lv['name']} | {lv['reducer']} | {lv['gflops']:.3f} | {lv['gflops_ratio']:.3f} | {lv['top1']:.2f} | "
            f"{lv['top1'] - dense['top1']:+.2f} | {lv['top5']:.2f} | {lv['agreement']:.3f} | "
            f"{lv['images_per_s']:.1f} | "
            f"{lv['images_per_s'] / dense['images_per_s']:.2f}x | {ops} |"
        )
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows += speed_markdown(card)
    head = (
        f"Rendered from `{path}` ({card['images']} images: "
        f"{', '.join(card['datasets'])}; {card['device']}; batch {card['batch_size']}) by "
        f"`{command}`, {stamp}; the evaluation commands are recorded in the card."
    )
    return "\n".join([CARD_BEGIN, head, "", *rows, CARD_END])


if __name__ == "__main__":
    sys.exit(main())
