"""Combine `models.evaluate --json` runs (one per evaluation set) into a level card.

    python -m models.make_card --runs samples.json val.json --out models/cards/deit_tiny_patch16_224.json

Top-level `levels` hold the figures over all images of all runs (accuracy and agreement
weighted by image count; images/s = all images / all model seconds); `datasets` keeps each
run's own table and command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from models.machine import replace_block

_STATIC = ("name", "reducer", "tokens_per_block", "gflops", "gflops_ratio")


def combine(runs: list[dict]) -> dict:
    """One card from several evaluate runs of the same model and levels."""
    if not runs:
        raise ValueError("no runs to combine")
    model = runs[0]["model"]
    names = [r["name"] for r in runs[0]["levels"]]
    for run in runs:
        if run["model"] != model or [r["name"] for r in run["levels"]] != names:
            raise ValueError(f"runs differ in model or levels: {run.get('dataset')}")
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.make_card", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="JSON files written by models.evaluate --json")
    p.add_argument("--out", required=True, help="card to write, e.g. models/cards/<model>.json")
    p.add_argument("--plot", help="also write a PNG of top-1 and agreement against GFLOPs")
    p.add_argument("--docs", help="also render the card's table into this markdown file (between card markers)")
    args = p.parse_args(argv)
    try:
        runs = [json.loads(Path(f).read_text()) for f in args.runs]
        card = combine(runs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(args.out).write_text(json.dumps(card, indent=2) + "\n")
    if args.plot:
        from models.evaluate import plot

        sets = " + ".join(card["datasets"])
        plot(card["levels"], args.plot, title=f"{card['model']} on {sets} ({card['images']} images, {card['device']})")
    if args.docs:
        replace_block(Path(args.docs), card_markdown(card, args.runs), begin=CARD_BEGIN, end=CARD_END)
    return 0


CARD_BEGIN, CARD_END = "<!-- card:begin -->", "<!-- card:end -->"


def card_markdown(card: dict, runs: list[str]) -> str:
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
        f"Rendered from `models/cards/{card['model']}.json` ({card['images']} images: "
        f"{', '.join(card['datasets'])}; {card['device']}; batch {card['batch_size']}) by "
        f"`python -m models.make_card --runs {' '.join(runs)} --docs ...`, {stamp}, after the "
        f"`models.evaluate` commands recorded in the card."
    )
    return "\n".join([CARD_BEGIN, head, "", *rows, CARD_END])


if __name__ == "__main__":
    sys.exit(main())
