"""Adaptive per-image density against the fixed levels, on labelled evaluation folders.

    HF_HOME=../shared/assets/hf-cache HF_HUB_OFFLINE=1 flock /tmp/sait-bench.lock \\
      python -m models.train.adaptive_eval --thresholds 0.5,0.6,0.7,0.8,0.9,0.95 \\
        --json docs/adaptive_density.json --plot docs/training_adaptive.png

Every fixed level runs on every image once; the probe (class attention at the first reduction
block) runs once per image too. An adaptive setting's prediction for an image is then the
prediction of the level that image is routed to, which is exactly what AdaptiveDensity
computes (tests/models/test_adaptive.py proves the equality; here `--check` re-runs the real
AdaptiveDensity forward on the first images of each set and reports how often the predictions
match). So all thresholds cost one pass. Decoded crops are cached under --cache-dir (/tmp).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from models import DENSE, SparseViT, WeightsError, load_model
from models.adaptive import AdaptiveDensity, needed_patches, probe
from models.evalset import EvalSetError, decode_items, read_labels
from models.evaluate import cpu_model
from models.preprocess import normalize_uint8

ASSETS = Path("../shared/assets")
DEFAULT_SETS = (ASSETS / "imagenet-samples", ASSETS / "imagenet-val")


def cached_crops(
    folder: Path, model: SparseViT, *, limit: int | None, cache_dir: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded uint8 crops and labels of `folder`, from the /tmp cache when present."""
    cfg = model.data_config
    key = hashlib.sha1(f"{folder.resolve()}|{limit}|{cfg}".encode()).hexdigest()[:12]
    path = cache_dir / f"{folder.name}-{key}.safetensors"
    if path.is_file():
        t = load_file(str(path))
        return t["crops"], t["labels"]
    items = read_labels(folder, folder / "labels.csv", limit=limit)
    crops, labels = decode_items(items, cfg)
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_file({"crops": crops, "labels": labels}, str(path))
    return crops, labels


@torch.inference_mode()
def predictions(
    model: SparseViT, crops: torch.Tensor, *, routers: dict[float, AdaptiveDensity], batch_size: int
) -> tuple[dict[str, torch.Tensor], dict[float, torch.Tensor]]:
    """Top-1 of every level for every image, and every threshold's bucket per image."""
    preds = {name: [] for name in model.levels}
    buckets = {t: [] for t in routers}
    some = next(iter(routers.values()))
    prefix = model.shape.num_prefix_tokens
    for start in tqdm(range(0, len(crops), batch_size), desc="levels", unit="batch"):
        x = normalize_uint8(crops[start : start + batch_size], model.data_config)
        for name in model.levels:
            preds[name].append(model(x, level=name).argmax(dim=-1))
        _, cls_attn, _ = probe(model, x, some.probe_block)
        for t, router in routers.items():
            buckets[t].append(router.bucket_for(needed_patches(cls_attn[:, prefix:], t)))
    return {k: torch.cat(v) for k, v in preds.items()}, {k: torch.cat(v) for k, v in buckets.items()}


@torch.inference_mode()
def check_equivalence(
    router: AdaptiveDensity, crops: torch.Tensor, composed: torch.Tensor, *, batch_size: int
) -> float:
    """Share of images where the real AdaptiveDensity forward predicts the composed class."""
    same = 0
    for start in range(0, len(crops), batch_size):
        x = normalize_uint8(crops[start : start + batch_size], router.model.data_config)
        logits, _ = router(x)
        same += int((logits.argmax(dim=-1) == composed[start : start + batch_size]).sum())
    return same / max(len(crops), 1)


def summarize(model: SparseViT, preds, buckets, labels, routers) -> list[dict]:
    """Rows for the fixed levels, then one per threshold: top-1, agreement, mean GFLOPs."""
    dense_gflops = model.level(DENSE).gflops
    rows = []
    for name, p in preds.items():
        lv = model.level(name)
        rows.append(
            {
                "name": name,
                "kind": "fixed",
                "gflops": lv.gflops,
                "gflops_ratio": lv.gflops_ratio,
                "top1": 100.0 * float((p == labels).float().mean()),
                "agreement": float((p == preds[DENSE]).float().mean()),
            }
        )
    for t, b in buckets.items():
        router = routers[t]
        names = [bk.level.name for bk in router.buckets]
        stacked = torch.stack([preds[n] for n in names])  # [buckets, N]
        p = stacked.gather(0, b.view(1, -1))[0]
        gflops = torch.tensor([bk.level.gflops for bk in router.buckets], dtype=torch.float64)[b].mean().item()
        share = {n: round(float((b == i).float().mean()), 4) for i, n in enumerate(names)}
        rows.append(
            {
                "name": f"adaptive@{t:g}",
                "kind": "adaptive",
                "threshold": t,
                "gflops": gflops,
                "gflops_ratio": gflops / dense_gflops,
                "top1": 100.0 * float((p == labels).float().mean()),
                "agreement": float((p == preds[DENSE]).float().mean()),
                "level_share": share,
                "_pred": p,
            }
        )
    return rows


def versus_fixed(rows: list[dict]) -> list[dict]:
    """Each adaptive row's top-1 and agreement minus the fixed levels' curve at its mean GFLOPs.

    The curve joins neighbouring fixed levels by straight lines (what mixing two levels in the
    right proportion would give); positive means adaptive routing beats the fixed levels.
    """
    fixed = sorted((r for r in rows if r["kind"] == "fixed"), key=lambda r: r["gflops"])
    for r in rows:
        if r["kind"] != "adaptive":
            continue
        g = min(max(r["gflops"], fixed[0]["gflops"]), fixed[-1]["gflops"])
        hi = next(i for i, f in enumerate(fixed) if f["gflops"] >= g)
        lo = max(hi - 1, 0)
        a, b = fixed[lo], fixed[hi]
        t = 0.0 if b["gflops"] == a["gflops"] else (g - a["gflops"]) / (b["gflops"] - a["gflops"])
        for key in ("top1", "agreement"):
            r[f"{key}_vs_fixed"] = r[key] - (a[key] + t * (b[key] - a[key]))
    return rows


def format_table(rows: list[dict]) -> str:
    versus_fixed(rows)
    lines = [
        "| setting | GFLOPs | ratio | top-1 % | agreement | top-1 vs fixed curve | agreement vs fixed curve "
        "| images per level |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = ", ".join(f"{k} {v:.0%}" for k, v in r.get("level_share", {}).items() if v > 0) or "-"
        vs = f"{r['top1_vs_fixed']:+.2f} | {r['agreement_vs_fixed']:+.4f}" if "top1_vs_fixed" in r else "- | -"
        lines.append(
            f"| {r['name']} | {r['gflops']:.3f} | {r['gflops_ratio']:.3f} | {r['top1']:.2f} | "
            f"{r['agreement']:.4f} | {vs} | {share} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "top1", "top-1 (%)"), (axes[1], "agreement", "top-1 agreement with dense")):
        for kind, style in (("fixed", "o-"), ("adaptive", "s--")):
            pts = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["gflops"])
            ax.plot([r["gflops"] for r in pts], [r[key] for r in pts], style, label=kind)
            for r in pts:
                tag = r["name"] if kind == "fixed" else f"t={r['threshold']:g}"
                ax.annotate(tag, (r["gflops"], r[key]), fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel("GFLOPs per image (mean)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def source_revision() -> str:
    """The commit the numbers came from, '-dirty' when models/ had uncommitted changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "models"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev or "unknown") + ("-dirty" if dirty else "")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m models.train.adaptive_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deit_tiny_patch16_224")
    p.add_argument("--weights", help="local .safetensors/.pth (default: pretrained via HF_HOME)")
    p.add_argument(
        "--sets", default=",".join(map(str, DEFAULT_SETS)), help="comma list of image folders with labels.csv"
    )
    p.add_argument("--thresholds", default="0.5,0.6,0.7,0.8,0.9,0.95")
    p.add_argument(
        "--levels", help="comma list of the sparse levels the router may choose (default: all; dense is always one)"
    )
    p.add_argument("--limit", type=int, help="first N images of each set only")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--check", type=int, default=100, help="images per set re-run through AdaptiveDensity")
    p.add_argument("--cache-dir", default="/tmp/sait-cache", help="decoded crops (never inside the repo)")
    p.add_argument("--json", help="write all rows here")
    p.add_argument("--plot", help="write top-1/agreement vs GFLOPs (all sets together) here")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    started = time.monotonic()
    try:
        thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
        model = load_model(args.model, weights=args.weights)
        levels = [n.strip() for n in args.levels.split(",") if n.strip()] if args.levels else None
        for name in levels or ():
            model.level(name)  # KeyError naming the known levels
        routers = {t: AdaptiveDensity(model, threshold=t, levels=levels) for t in thresholds}
        per_set, all_preds, all_buckets, all_labels = {}, [], [], []
        for folder in [Path(s) for s in args.sets.split(",") if s.strip()]:
            crops, labels = cached_crops(folder, model, limit=args.limit, cache_dir=Path(args.cache_dir))
            preds, buckets = predictions(model, crops, routers=routers, batch_size=args.batch_size)
            rows = summarize(model, preds, buckets, labels, routers)
            n_check = min(args.check, len(crops))
            for r in rows:
                if r["kind"] == "adaptive":
                    r["check_images"] = n_check
                    r["check_match"] = check_equivalence(
                        routers[r["threshold"]], crops[:n_check], r["_pred"][:n_check], batch_size=args.batch_size
                    )
            per_set[folder.name] = {"images": len(labels), "rows": rows}
            all_preds.append(preds), all_buckets.append(buckets), all_labels.append(labels)
    except (KeyError, ValueError, EvalSetError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cat = lambda ds: {k: torch.cat([d[k] for d in ds]) for k in ds[0]}
    combined = summarize(model, cat(all_preds), cat(all_buckets), torch.cat(all_labels), routers)
    n_total = sum(v["images"] for v in per_set.values())
    for name, part in per_set.items():
        print(f"\n{name} ({part['images']} images)\n{format_table(part['rows'])}")
    print(f"\nall sets ({n_total} images)\n{format_table(combined)}")
    for rows in [combined, *(p["rows"] for p in per_set.values())]:
        for r in rows:
            r.pop("_pred", None)
    result = {
        "model": args.model,
        "weights": args.weights or "pretrained",
        "device": cpu_model(),
        "threads": torch.get_num_threads(),
        "source": source_revision(),
        "wall_s": round(time.monotonic() - started, 1),
        "command": "python -m models.train.adaptive_eval " + shlex.join(argv),
        "probe_block": next(iter(routers.values())).probe_block,
        "probe_gflops": next(iter(routers.values())).probe_gflops(),
        "levels": {n: lv.as_dict() for n, lv in model.levels.items()},
        "sets": per_set,
        "combined": {"images": n_total, "rows": combined},
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        plot(
            combined,
            Path(args.plot),
            title=f"{args.model}: adaptive vs fixed levels, {n_total} images ({', '.join(per_set)}), {cpu_model()}",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
