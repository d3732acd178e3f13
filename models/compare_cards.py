"""Level cards side by side: per level, top-1 of each card, and the plot of top-1 against GFLOPs.

    python -m models.compare_cards models/cards/deit_tiny_patch16_224.json \\
        models/cards/deit_tiny_sait_h200_535steps.json --names pretrained,trained \\
        --plot docs/training_cards.png --docs docs/training.md

The first card is the reference: every other card's levels are compared with its level of
the same name, and with its dense level (the "pretrained dense" the targets are stated in).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from models.machine import replace_block

BEGIN, END = "<!-- cards:begin -->", "<!-- cards:end -->"


def read_card(path: str | Path) -> dict:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("levels"), list):
        raise ValueError(f"{path} is not a level card (no levels)")
    return data


def markdown(cards: list[dict], names: list[str], paths: list[str], command: str) -> str:
    ref, ref_levels = cards[0], {lv["name"]: lv for lv in cards[0]["levels"]}
    ref_dense = ref_levels["dense"]["top1"]
    others = list(zip(names[1:], cards[1:]))
    head_cols = [f"top-1 {names[0]}"]
    for name, _ in others:
        head_cols += [f"top-1 {name}", f"Δ vs {names[0]} level", f"Δ vs {names[0]} dense", f"agreement {name}"]
    sets = list(ref.get("datasets", {}))
    for s in sets:
        head_cols += [f"{s}: {' → '.join(names)}"]
    rows = [
        "| level | GFLOPs ratio | " + " | ".join(head_cols) + " |",
        "|---|---|" + "---|" * len(head_cols),
    ]
    for lv in cards[0]["levels"]:
        cells = [lv["name"], f"{lv['gflops_ratio']:.3f}", f"{lv['top1']:.2f}"]
        for _, card in others:
            theirs = {x["name"]: x for x in card["levels"]}.get(lv["name"])
            if theirs is None:
                cells += ["-"] * 4
                continue
            cells += [
                f"{theirs['top1']:.2f}",
                f"{theirs['top1'] - lv['top1']:+.2f}",
                f"{theirs['top1'] - ref_dense:+.2f}",
                f"{theirs['agreement']:.3f}",
            ]
        for s in sets:
            per = []
            for card in cards:
                levels = {x["name"]: x for x in card.get("datasets", {}).get(s, {}).get("levels", [])}
                per.append(f"{levels[lv['name']]['top1']:.2f}" if lv["name"] in levels else "-")
            cells.append(" → ".join(per))
        rows.append("| " + " | ".join(cells) + " |")
    sources = "; ".join(
        f"{name}: `{path}` (weights sha256 {_short(card.get('weights_sha256'))}, {card['images']} images, "
        f"{card['device']})"
        for name, path, card in zip(names, paths, cards)
    )
    head = (
        f"`{command}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Cards: {sources}. Agreement is with "
        "the card's own dense level."
    )
    return "\n".join([BEGIN, head, "", *rows, END])


def _short(sha: str | None) -> str:
    return f"{sha[:12]}…" if sha else "not recorded"


def plot(cards: list[dict], names: list[str], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=100)
    for name, card in zip(names, cards):
        levels = sorted(card["levels"], key=lambda lv: lv["gflops"])
        xs, ys = [lv["gflops"] for lv in levels], [lv["top1"] for lv in levels]
        ax.plot(xs, ys, "o-", label=name, linewidth=1.4)
        for lv in levels:
            ax.annotate(lv["name"], (lv["gflops"], lv["top1"]), fontsize=7, textcoords="offset points", xytext=(3, -9))
    dense = next(lv for lv in cards[0]["levels"] if lv["name"] == "dense")
    ax.axhline(dense["top1"] - 0.5, color="0.6", linestyle=":", linewidth=1)
    ax.annotate(
        f"{names[0]} dense - 0.5",
        (ax.get_xlim()[0], dense["top1"] - 0.5),
        fontsize=7,
        xytext=(4, 3),
        textcoords="offset points",
        color="0.4",
    )
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel(f"top-1 (%), {cards[0]['images']} images")
    ax.set_title(" vs ".join(names) + f": {' + '.join(cards[0].get('datasets', {}))}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m models.compare_cards", description=__doc__.split("\n\n")[0])
    p.add_argument("cards", nargs="+", help="level card JSON files; the first is the reference")
    p.add_argument("--names", help="comma list of names for the cards (default: the file names)")
    p.add_argument("--plot", help="PNG of top-1 against GFLOPs, one curve per card")
    p.add_argument("--docs", help="markdown file: the table replaces the block between cards markers")
    args = p.parse_args(argv)
    try:
        if len(args.cards) < 2:
            raise ValueError("give at least two cards to compare")
        cards = [read_card(c) for c in args.cards]
        names = args.names.split(",") if args.names else [Path(c).stem for c in args.cards]
        if len(names) != len(cards):
            raise ValueError(f"--names gives {len(names)} names for {len(cards)} cards")
        if not any(lv["name"] == "dense" for lv in cards[0]["levels"]):
            raise ValueError(f"the reference card {args.cards[0]} has no dense level")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = "python -m models.compare_cards " + " ".join(argv)
    table = markdown(cards, names, args.cards, command)
    print(table)
    if args.plot:
        plot(cards, names, args.plot)
    if args.docs:
        replace_block(Path(args.docs), table, begin=BEGIN, end=END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
