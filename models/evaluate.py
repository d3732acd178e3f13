"""Measure every density level of a model on a labelled image folder.

    python -m models.evaluate --model deit_tiny_patch16_224 \
        --images ../shared/assets/imagenet-samples --labels ../shared/assets/imagenet-samples/labels.csv \
        --levels all --batch-size 32 --json out.json --plot out.png

Images are decoded once (models.preprocess, i.e. timm's eval transform). Then, batch by
batch, every level runs on the same batch, so that all levels see the same inputs, batch
size and background load; images_per_s counts model time only (normalize + forward).
`agreement` is top-1 agreement with the dense level on the same images.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from models.device import DeviceUnavailable, resolve_device
from models.evalset import EvalSetError, decode_items, read_labels
from models.fingerprint import weights_fingerprint
from models.levels import DENSE
from models.loader import load_model
from models.machine import cpu_model
from models.preprocess import normalize_uint8
from models.sparse_vit import SparseViT
from models.weights import WeightsError


class UsageError(ValueError):
    """Bad command-line arguments; the message is one readable line."""


@dataclass
class LevelTally:
    """Running counts for one level."""

    top1: int = 0
    top5: int = 0
    agree: int = 0
    seconds: float = 0.0


def parse_levels(spec: str, model: SparseViT) -> list[str]:
    """`all` or a comma list of known level names (densest first, duplicates dropped)."""
    if spec.strip() == "all":
        return list(model.levels)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in model.levels]
    if not names or unknown:
        raise UsageError(f"unknown level(s) {', '.join(unknown) or spec!r}; known: {', '.join(model.levels)}")
    return [n for n in model.levels if n in names]


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def evaluate(
    model: SparseViT,
    crops: torch.Tensor,
    labels: torch.Tensor,
    *,
    levels: list[str],
    batch_size: int,
    device: torch.device,
    progress: bool = True,
) -> list[dict]:
    """Top-1, top-5, agreement with dense and images/s for each level, in `levels` order.

    Args:
        model: the SparseViT (moved to `device` here).
        crops: uint8 [N,3,H,W] from models.preprocess.pil_to_uint8.
        labels: int64 [N] class indices.
        levels: level names to report; dense always runs too (agreement needs it).
        batch_size: images per forward, the same for every level.
        device: where the model runs.
    """
    model = model.to(device)
    cfg = model.data_config
    run_names = list(dict.fromkeys([DENSE, *levels]))
    tallies = {name: LevelTally() for name in run_names}
    # Warm-up: one forward per level, so one-off costs (allocations, kernel choice) are not timed.
    warm = normalize_uint8(crops[:batch_size].to(device), cfg)
    for name in run_names:
        model(warm, level=name)
    n = len(labels)
    batches = range(0, n, batch_size)
    for start in tqdm(batches, desc="evaluate", unit="batch", disable=not progress):
        x_u8 = crops[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        dense_pred = None
        for name in run_names:
            _sync(device)
            t0 = time.perf_counter()
            logits = model(normalize_uint8(x_u8, cfg), level=name)
            _sync(device)
            tally = tallies[name]
            tally.seconds += time.perf_counter() - t0
            top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
            pred = top5[:, 0]
            if name == DENSE:
                dense_pred = pred
            tally.top1 += int((pred == y).sum())
            tally.top5 += int((top5 == y[:, None]).any(dim=-1).sum())
            tally.agree += int((pred == dense_pred).sum())
    rows = []
    for name in levels:
        lv, t = model.level(name), tallies[name]
        rows.append(
            {
                **lv.as_dict(),
                "top1": round(100.0 * t.top1 / n, 2),
                "top5": round(100.0 * t.top5 / n, 2),
                "agreement": round(t.agree / n, 4),
                "images_per_s": round(n / t.seconds, 2) if t.seconds > 0 else None,
            }
        )
    return rows


def evaluate_set(
    model: SparseViT,
    images: str | Path,
    labels_csv: str | Path,
    *,
    levels: list[str],
    batch_size: int,
    device: torch.device,
    limit: int | None = None,
    progress: bool = True,
) -> tuple[list[dict], int]:
    """Decode one labelled folder and measure `levels` on it: (rows as `evaluate` returns them, images)."""
    items = read_labels(images, labels_csv, limit=limit)
    crops, labels = decode_items(items, model.data_config, progress=progress)
    rows = evaluate(model, crops, labels, levels=levels, batch_size=batch_size, device=device, progress=progress)
    return rows, len(labels)


def run_record(
    *, model: str, weights: str | None, device: torch.device, images: str | Path, n: int, batch_size: int, command: str
) -> dict:
    """What a run's JSON says besides its rows: the model, which weights (file and sha256), where, how."""
    fingerprint = weights_fingerprint(model, weights)
    return {
        "model": model,
        "weights": weights or "pretrained",
        **(fingerprint.as_dict() if fingerprint else {}),
        "device": device_description(device),
        "images": n,
        "dataset": Path(images).name,
        "batch_size": batch_size,
        "command": command,
    }


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'level':<7} {'reducer':<14} {'GFLOPs':>7} {'ratio':>6} {'top1':>6} {'top5':>6} {'agree':>6} {'img/s':>8}"
        "  tokens per block"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name']:<7} {r['reducer']:<14} {r['gflops']:>7.3f} {r['gflops_ratio']:>6.3f} {r['top1']:>6.2f} "
            f"{r['top5']:>6.2f} {r['agreement']:>6.3f} {r['images_per_s'] or 0:>8.1f}  "
            f"{','.join(map(str, r['tokens_per_block']))}"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: str | Path, *, title: str) -> None:
    """Top-1 and agreement against GFLOPs: the levels as one curve, marked per reducer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["gflops"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "top1", "top-1 (%)"), (axes[1], "agreement", "top-1 agreement with dense")):
        ax.plot([r["gflops"] for r in rows], [r[key] for r in rows], "-", color="0.7", zorder=1)
        for reducer in dict.fromkeys(r["reducer"] for r in rows):
            pts = [r for r in rows if r["reducer"] == reducer]
            ax.scatter([p["gflops"] for p in pts], [p[key] for p in pts], label=reducer, zorder=2)
        for p in rows:
            ax.annotate(p["name"], (p["gflops"], p[key]), fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel("GFLOPs per image")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="reducer", title_fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m models.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="timm model name, e.g. deit_tiny_patch16_224")
    p.add_argument("--weights", help="local .safetensors or .pth (default: pretrained via HF_HOME)")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--labels", required=True, help="CSV with columns filename,class_index")
    p.add_argument("--levels", default="all", help="all, or a comma list such as dense,l060")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--limit", type=int, help="evaluate only the first N images of the CSV")
    p.add_argument("--json", required=True, help="write the results here")
    p.add_argument("--plot", help="write a PNG of top-1 and agreement against GFLOPs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        if args.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
        json_path = Path(args.json)
        for out in filter(None, (args.json, args.plot)):
            if not Path(out).parent.is_dir():
                raise UsageError(f"output folder does not exist: {Path(out).parent}")
        device = resolve_device(args.device)
        read_labels(args.images, args.labels, limit=args.limit)  # a bad folder fails before the model loads
        model = load_model(args.model, weights=args.weights)
        levels = parse_levels(args.levels, model)
        rows, n = evaluate_set(
            model,
            args.images,
            args.labels,
            levels=levels,
            batch_size=args.batch_size,
            device=device,
            limit=args.limit,
            progress=not args.quiet,
        )
        result = run_record(
            model=args.model,
            weights=args.weights,
            device=device,
            images=args.images,
            n=n,
            batch_size=args.batch_size,
            command="python -m models.evaluate " + shlex.join(argv),
        )
    except (UsageError, DeviceUnavailable, EvalSetError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["levels"] = rows
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(rows))
    if args.plot:
        plot(rows, args.plot, title=f"{args.model} on {result['dataset']} ({n} images, {result['device']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
