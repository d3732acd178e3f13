"""The schedule search behind the default levels (docs/accuracy.md, "schedules tried").

    python -m models.schedule_search --model deit_tiny_patch16_224 \
        --set ../shared/assets/imagenet-samples --set ../shared/assets/imagenet-val \
        --subset 600 --cache /tmp/sait-eval-crops.pt --out /tmp/search.jsonl \
        merge:2+fp@0.6 mergegeo:3+fp@0.6 hybg:prunef:2:0.85:merge+fp@0.5

Each job is `<schedule>@<target GFLOPs ratio>`; its one strength knob is fitted so that the
schedule is as dense as possible at or below the target, then it runs on a fixed random
subset of the images and reports the top-1 change against dense and the agreement with
dense. Decoded crops are cached (outside the repository) so a search only runs the model.

Schedules (`s` = first block, `b` = block, `k` = fraction of patches kept):
  merge[:s], pitome[:s]    constant tokens removed per block from block s (ToMe's r)
  mergegeo[:s]             a constant fraction of the patches merged per block from block s
  mergedec, pitomedec      ToMe's decreasing schedule (2r at block 0 down to 0)
  evit, evitf, tps         prune (f: with fusion) or squeeze at blocks 3, 6, 9, one keep rate
  naive                    one top-k class-attention prune at block 3 (the baseline)
  hyb:<early>:<b>:<k>:<late>[:s], hybg:...   one early prune/prunef/squeeze at block b, then
                           constant (hyb) or geometric (hybg) <late> reduction from s (= b+1)
  at:<b1,b2,..>:<r1,r2,..> a few reduction points (SaiT-style): at each listed block the same
                           fraction of the patches goes, by reducer r_i (prune, prunef, merge,
                           ...; one name for all), e.g. at:4,8:merge or at:3,6,9:prune
Suffix `+fp`: the exact last-block trim to 2 tokens. Prefix `np/`: no proportional attention.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from models.evalset import decode_items, read_labels
from models.levels import ReductionStep
from models.loader import load_model
from models.op_count import count_level_ops
from models.preprocess import normalize_uint8
from models.schedules import gflops_ratio
from models.sparse_vit import SparseViT


def _counts_to_steps(counts: list[int], reducers: list[tuple[str, bool] | None], n0: int) -> tuple[ReductionStep, ...]:
    steps, n = [], n0
    for block, (count, red) in enumerate(zip(counts, reducers)):
        count = max(int(count), 3)
        if red is not None and count < n:
            steps.append(ReductionStep(block, red[0], count, red[1]))
            n = count
    return tuple(steps)


def build(spec: str, strength: float, depth: int, n0: int) -> tuple[ReductionStep, ...]:
    """Steps of schedule `spec` at `strength` (tokens per block, or a fraction for rates)."""
    if spec.endswith("+fp"):
        steps = [s for s in build(spec[:-3], strength, depth, n0) if s.block != depth - 1]
        return tuple(steps) + (ReductionStep(depth - 1, "prune", 2),)
    parts = spec.split(":")
    kind = parts[0]
    counts: list[int] = []
    reducers: list[tuple[str, bool] | None] = []
    if kind in ("merge", "pitome", "mergegeo"):
        start = int(parts[1]) if len(parts) > 1 else 0
        n, removed = n0, 0.0
        for block in range(depth):
            if block >= start:
                if kind == "mergegeo":
                    n = round((n - 1) * (1 - min(strength, 0.99))) + 1
                else:
                    removed += strength
                    n = n0 - round(removed)
            counts.append(n)
            reducers.append(("pitome" if kind == "pitome" else "merge", False) if block >= start else None)
    elif kind in ("mergedec", "pitomedec"):
        removed = 0.0
        for block in range(depth):
            removed += strength * 2 * (1 - block / (depth - 1))
            counts.append(n0 - round(removed))
            reducers.append((kind[:-3], False))
    elif kind in ("evit", "evitf", "tps", "naive"):
        keep_rate = 1 - min(strength, 0.99)
        blocks = [3] if kind == "naive" else [depth // 4, depth // 2, 3 * depth // 4]
        red = ("squeeze", False) if kind == "tps" else ("prune", kind == "evitf")
        n = n0
        for block in range(depth):
            if block in blocks:
                n = round((n - 1) * keep_rate) + 1
            counts.append(n)
            reducers.append(red if block in blocks else None)
    elif kind in ("hyb", "hybg"):
        early, early_block, keep_frac, late = parts[1], int(parts[2]), float(parts[3]), parts[4]
        start = int(parts[5]) if len(parts) > 5 else early_block + 1
        fuse = early == "prunef"
        n = round((n0 - 1) * keep_frac) + 1 + int(fuse)
        n_early = n
        for block in range(depth):
            if block == early_block:
                reducers.append(("prune" if fuse else early, fuse))
            elif block >= start and block > early_block:
                if kind == "hybg":
                    n = round((n - 1) * (1 - min(strength, 0.99))) + 1
                else:
                    n = n_early - round(strength * (block - start + 1))
                reducers.append((late, False))
            else:
                reducers.append(None)
            counts.append(n if block >= early_block else n0)
    elif kind == "at":
        blocks = [int(b) for b in parts[1].split(",")]
        names = parts[2].split(",") if len(parts) > 2 else ["merge"]
        names = names * len(blocks) if len(names) == 1 else names
        if len(names) != len(blocks):
            raise ValueError(f"{spec!r}: one reducer, or one per block")
        by_block = dict(zip(blocks, names))
        n = n0
        for block in range(depth):
            red = by_block.get(block)
            if red is not None:
                fuse = red == "prunef"
                n = round((n - 1) * (1 - min(strength, 0.99))) + 1 + int(fuse)
                reducers.append(("prune" if fuse else red, fuse))
            else:
                reducers.append(None)
            counts.append(n)
    else:
        raise ValueError(f"unknown schedule {spec!r}")
    return _counts_to_steps(counts, reducers, n0)


def fit(spec: str, target: float, model: SparseViT) -> tuple[float, tuple[ReductionStep, ...]] | None:
    """The smallest strength (densest schedule) whose GFLOPs ratio is at or below target.

    `level:<name>` is the model's own level of that name (the target is not read).
    """
    if spec.startswith("level:"):
        return 0.0, model.level(spec.split(":", 1)[1]).schedule
    shape = model.shape
    n0 = shape.num_patches + shape.num_prefix_tokens
    hi = (
        1.0
        if any(spec.split(":")[0].startswith(k) for k in ("mergegeo", "hybg", "evit", "tps", "naive", "at"))
        else float(n0)
    )
    lo, best = 0.0, None
    for _ in range(40):
        mid = (lo + hi) / 2
        steps = build(spec, mid, shape.depth, n0)
        if gflops_ratio(shape, steps) <= target:
            best, hi = (mid, steps), mid
        else:
            lo = mid
    return best


def load_crops(sets: list[str], model: SparseViT, cache: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    if cache is not None and cache.is_file():
        data = torch.load(cache, weights_only=True)
        return data["x"], data["y"]
    xs, ys = [], []
    for folder in sets:
        x, y = decode_items(read_labels(folder, Path(folder) / "labels.csv"), model.data_config)
        xs.append(x)
        ys.append(y)
    x, y = torch.cat(xs), torch.cat(ys)
    if cache is not None:
        torch.save({"x": x, "y": y}, cache)
    return x, y


def _ablation(variant: str, attention):
    """np: merged tokens' sizes stop biasing attention; mk: keys averaged over heads."""
    if variant not in ("np", "mk"):
        raise ValueError(f"unknown ablation {variant!r} (np, mk)")

    def patched(attn, x, log_size, **needs):
        out, cls_attn, keys = attention(attn, x, None if variant == "np" else log_size, **needs)
        if variant == "mk" and keys is not None:
            keys = keys.view(*keys.shape[:2], attn.num_heads, -1).mean(2)
        return out, cls_attn, keys

    return patched


@torch.inference_mode()
def predictions(
    model: SparseViT, x: torch.Tensor, level: str, batch_size: int = 64, *, bf16: bool = False, noise: float = 0.0
) -> torch.Tensor:
    """Top-1 per image at `level`.

    Args:
        bf16: the blocks under bf16 autocast, the head in fp32 (as the runner serves bf16).
        noise: add Gaussian noise of this std to the normalized input (fixed seed): how much a
            level's choice of tokens, and so its answer, moves under a tiny input change.
    """
    cfg = model.data_config
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(0, len(x), batch_size):
        xb = normalize_uint8(x[i : i + batch_size], cfg)
        if noise:
            xb = xb + noise * torch.randn(xb.shape, generator=gen)
        if bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
                lv = model.level(level)
                feats = model.timm_model.forward_features(xb) if not lv.schedule else model.forward_features(xb, lv)
            out.append(model.forward_head(feats.float()).argmax(-1))
        else:
            out.append(model(xb, level=level).argmax(-1))
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.schedule_search", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deit_tiny_patch16_224")
    p.add_argument("--set", action="append", default=[], help="image folder with labels.csv (repeatable)")
    p.add_argument("--subset", type=int, default=600, help="random images to search on (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, help="decoded crops cache (.pt), outside the repository")
    p.add_argument("--out", type=Path, required=True, help="JSON lines, one per job (appended)")
    p.add_argument("--plot", type=Path, help="plot every row of --out: agreement against GFLOPs, per family")
    p.add_argument(
        "--stability",
        action="store_true",
        help="also: top-1 agreement of bf16 (head fp32) with fp32, and top-1 changes under input noise",
    )
    p.add_argument("--noise", type=float, default=1e-3, help="--stability: std of the noise on the normalized input")
    p.add_argument(
        "jobs", nargs="*", help="<schedule>@<target>, e.g. merge:2+fp@0.6; level:<name>@0 = the model's level"
    )
    args = p.parse_args(argv)
    if args.jobs and not (args.set or (args.cache and args.cache.is_file())):
        p.error("jobs need --set (or a filled --cache)")
    if args.jobs:
        run_jobs(args)
    if args.plot:
        plot_search([json.loads(line) for line in args.out.read_text().splitlines() if line.strip()], args.plot)
    return 0


def family(kind: str) -> str:
    """Plot group of a schedule name: its reducer family."""
    base = kind.split("/")[-1].replace("+fp", "")
    head = base.split(":")[0]
    if head in ("hyb", "hybg"):
        return f"{base.split(':')[1].replace('prunef', 'prune')} then {base.split(':')[4]}"
    if head == "at":
        return "few points: " + "+".join(dict.fromkeys(base.split(":")[2].replace("prunef", "prune").split(",")))
    return {
        "mergedec": "merge",
        "mergegeo": "merge",
        "pitomedec": "pitome",
        "evitf": "prune",
        "evit": "prune",
        "tps": "squeeze",
        "naive": "prune (naive)",
    }.get(head, head) + (" (no prop. attn)" if kind.startswith("np/") else "")


def plot_search(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(family(r["kind"]), []).append(r)
    markers = "osD^v<>phX*"
    for i, (name, pts) in enumerate(sorted(groups.items())):
        ax.scatter(
            [p["ratio"] for p in pts],
            [p["agree"] for p in pts],
            label=name,
            marker=markers[i % len(markers)],
            alpha=0.8,
        )
    ax.set_xlabel("GFLOPs / dense GFLOPs")
    ax.set_ylabel("top-1 agreement with dense")
    ax.set_title(f"Schedules tried ({rows[0]['subset']} images, DeiT-Tiny, no training)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_jobs(args: argparse.Namespace) -> None:
    model = load_model(args.model)
    x, y = load_crops(args.set, model, args.cache)
    if args.subset:
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed))[: args.subset].sort().values
        x, y = x[idx], y[idx]
    dense = predictions(model, x, "dense")
    dense_top1 = (dense == y).float().mean().item()
    dense_ops = count_level_ops(model, "dense").ops
    original_attention = SparseViT._attention
    for job in args.jobs:
        spec, target = job.rsplit("@", 1)
        variant, _, spec = spec.rpartition("/")
        found = fit(spec, float(target), model)
        if found is None:
            print(f"{job}: no schedule reaches the target", file=sys.stderr)
            continue
        strength, steps = found
        sparse = SparseViT(model.timm_model, schedules={"job": steps})
        if variant:
            sparse._attention = _ablation(variant, original_attention)
        t0 = time.perf_counter()
        pred = predictions(sparse, x, "job")
        level = sparse.level("job")
        row = {
            "kind": job.rsplit("@", 1)[0],
            "target": float(target),
            "param": round(strength, 3),
            "ratio": round(level.gflops_ratio, 4),
            "subset": len(y),
            "dtop1": round(((pred == y).float().mean().item() - dense_top1) * 100, 2),
            "agree": round((pred == dense).float().mean().item(), 4),
            "tokens": list(level.tokens_per_block),
            "s": round(time.perf_counter() - t0, 1),
            "ops": count_level_ops(sparse, "job").ops,
            "dense_ops": dense_ops,
        }
        if args.stability:
            row["bf16_agree"] = round((predictions(sparse, x, "job", bf16=True) == pred).float().mean().item(), 4)
            row["noise_flips"] = int((predictions(sparse, x, "job", noise=args.noise) != pred).sum())
            row["noise"] = args.noise
        print(json.dumps(row), flush=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
