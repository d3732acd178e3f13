"""Throughput of the training data paths on this machine's CPU: what bounds a GPU run.

    flock /tmp/sait-cpu.lock python -m bench.train_data --images 256 --docs docs/training.md

Per image, on one thread (so that the figure scales with the cores of the GPU host):
`loader` is what each DataLoader process of `--data loader` does (PIL decode, timm's random
resized crop, flip, RandAugment, ToTensor, normalize); `decode` is the one-off decode of
`--data memory` (models.train.memory.decode_one); `augment` is that path's per-batch
augmentation (models.train.memory.augment) run on the CPU at batch 128, a ceiling on its cost
on a GPU, where it is a few batched kernels; `eval decode` is the evaluation sets' decode
(models.evalset), which the end-of-run card needs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from models.evalset import decode_items, read_labels
from models.machine import cpu_model, replace_block
from models.preprocess import DataConfig
from models.train import TrainConfig
from models.train.data import SeededImages, TrainDataError, build_transform, read_train_labels
from models.train.memory import AugmentSettings, augment, decode_one, draw_params

ASSETS = Path("../shared/assets")
BEGIN, END = "<!-- train-data:begin -->", "<!-- train-data:end -->"


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1)


def measure(pool: Path, eval_sets: list[Path], *, images: int, seed: int) -> list[dict]:
    cfg = DataConfig()  # DeiT-Tiny's
    rows = read_train_labels(pool, pool / "labels.csv")
    rows = random.Random(seed).sample(rows, min(images, len(rows)))
    torch.set_num_threads(1)
    results = []

    transform = build_transform(
        cfg, augment=True, auto_augment=TrainConfig.auto_augment, crop_scale_min=TrainConfig.crop_scale_min
    )
    dataset = SeededImages(rows, transform)
    t0 = time.perf_counter()
    for i in range(len(rows)):
        dataset[(i, seed + i)]
    results.append(
        {"path": "loader (per process)", "images": len(rows), "images_per_s": rate(len(rows), time.perf_counter() - t0)}
    )

    t0 = time.perf_counter()
    stored = torch.stack([decode_one(path, 256) for path, _ in rows])
    results.append(
        {
            "path": "memory: decode once (per thread)",
            "images": len(rows),
            "images_per_s": rate(len(rows), time.perf_counter() - t0),
        }
    )

    batch, batches = 128, max(2, len(rows) // 128)
    generator = torch.Generator().manual_seed(seed)

    def one_batch(b: int) -> None:  # full batches, cycling through the stored images
        x = stored[torch.arange(b * batch, (b + 1) * batch) % len(stored)]
        augment(x, draw_params(batch, AugmentSettings(), generator), cfg)

    for threads in sorted({1, _cores()}):
        torch.set_num_threads(threads)
        one_batch(0)  # warm-up
        t0 = time.perf_counter()
        for b in range(batches):
            one_batch(b)
        n = batches * batch
        results.append(
            {
                "path": f"memory: augment on the CPU, batch 128, {threads} thread(s)",
                "images": n,
                "images_per_s": rate(n, time.perf_counter() - t0),
            }
        )
    torch.set_num_threads(1)

    for folder in eval_sets:
        items = read_labels(folder, folder / "labels.csv", limit=images)
        t0 = time.perf_counter()
        decode_items(items, cfg, progress=False, threads=1)
        results.append(
            {
                "path": f"eval decode: {folder.name} (per thread)",
                "images": len(items),
                "images_per_s": rate(len(items), time.perf_counter() - t0),
            }
        )
    return results


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def markdown(results: list[dict], command: str) -> str:
    rows = ["| data path | images | images/s |", "|---|---|---|"]
    rows += [f"| {r['path']} | {r['images']} | {r['images_per_s']:,} |" for r in results]
    head = f"`{command}` on {cpu_model()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}:"
    return "\n".join([BEGIN, head, "", *rows, END])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench.train_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--pool", default=str(ASSETS / "distill-pool"))
    p.add_argument("--eval-sets", nargs="*", default=[str(ASSETS / "imagenet-samples"), str(ASSETS / "imagenet-val")])
    p.add_argument("--images", type=int, default=256, help="images per measurement (a seeded sample of the pool)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--docs", help="markdown file: the table replaces the block between train-data markers")
    args = p.parse_args(argv)
    try:
        if args.images < 1:
            raise ValueError(f"--images must be at least 1, got {args.images}")
        results = measure(Path(args.pool), [Path(s) for s in args.eval_sets], images=args.images, seed=args.seed)
    except (ValueError, TrainDataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = "python -m bench.train_data " + " ".join(argv)
    for r in results:
        print(json.dumps(r))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.docs:
        replace_block(Path(args.docs), markdown(results, command), begin=BEGIN, end=END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
