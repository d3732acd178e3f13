"""Top-1 agreement of reduced precision (bf16, fp16) with fp32, per level, on real photos.

Agreement is paired: the same image, the same level, the same uint8 input; only the
precision differs. Images are preprocessed once on the CPU reference path
(models.preprocess.pil_to_uint8), so decode differences do not enter the comparison.
"""

from __future__ import annotations

import csv
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from bench.environment import describe
from models import load_model
from models.device import resolve_device
from models.preprocess import DataConfig, pil_to_uint8
from service.device.factory import create_runner

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"  # ../shared/assets of the checkout
IMAGE_SETS = ("imagenet-samples", "imagenet-val")


@dataclass(frozen=True)
class PrecisionBenchConfig:
    """What to compare.

    Args:
        model: timm model name; pretrained weights (HF cache) unless `weights` is given.
        weights: local .safetensors/.pth, or None.
        device: "auto", "cpu" or "cuda".
        precisions: the reduced precisions compared with fp32; a "-head16" suffix (as in
            "bf16-head16") runs the head under autocast too (the runner keeps it in fp32).
        images_per_set: images taken from each of imagenet-samples and imagenet-val, evenly
            spaced over the sorted file list (0 = all of them).
        fp16_images_per_set: a smaller count for fp16 (CPU fp16 autocast is emulated, slow);
            0 = same as images_per_set.
        batch_size: images per runner call.
        cuda_graphs: run through the CUDA-graph runner when on CUDA (what serving uses); only
            the bucket of `batch_size` is captured (a short last batch is padded to it).
        assets: folder holding the image sets.
        time_limit_s: stop after this many seconds (checked after every level), keeping what
            was measured and saying what was not; 0 = no limit.
        levels: level names, or () for all of the model's.
    """

    model: str = "deit_tiny_patch16_224"
    weights: str | None = None
    device: str = "auto"
    precisions: tuple[str, ...] = ("bf16", "fp16")
    images_per_set: int = 0
    fp16_images_per_set: int = 0
    batch_size: int = 32
    cuda_graphs: bool = True
    assets: str = str(ASSETS)
    time_limit_s: float = 3600.0
    levels: tuple[str, ...] = ()


def pick_evenly(files: list[Path], count: int) -> list[Path]:
    """`count` files spread over the sorted list (all when count is 0 or larger than the list)."""
    files = sorted(files)
    if count <= 0 or count >= len(files):
        return files
    step = len(files) / count
    return [files[int(i * step)] for i in range(count)]


def load_images(assets: Path, per_set: int, cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """uint8 [N,3,H,W], labels [N], and "set/file" names, from the evaluation sets."""
    tensors, labels, names = [], [], []
    for set_name in IMAGE_SETS:
        folder = assets / set_name
        label_of = {}
        with (folder / "labels.csv").open() as f:
            for row in csv.DictReader(f):
                label_of[row["filename"]] = int(row["class_index"])
        files = pick_evenly([p for p in folder.iterdir() if p.name in label_of], per_set)
        for path in tqdm(files, desc=f"decode {set_name}", unit="img"):
            with Image.open(path) as im:
                tensors.append(pil_to_uint8(im, cfg))
            labels.append(label_of[path.name])
            names.append(f"{set_name}/{path.name}")
    return torch.stack(tensors), torch.tensor(labels), names


def predict(runner, level: str, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Top-1 class per image at `level`; a short last batch is padded to `batch_size` (a sample's
    result does not depend on its batch mates), so a graph runner needs one bucket only."""
    tops = []
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = torch.cat([chunk, chunk[:1].expand(batch_size - n, *chunk.shape[1:])])
        tops.append(runner.run(level, chunk).topk_indices[:n, 0])
    return torch.cat(tops)


def _make_runner(model, device: torch.device, base: str, head: str, cfg: PrecisionBenchConfig, levels):
    kw = dict(
        device=str(device),
        precision=base,
        max_batch_size=cfg.batch_size,
        top_k=1,
        fp32_head=head != "head16",
        levels=levels,
    )
    if cfg.cuda_graphs and device.type == "cuda":
        # One bucket per level instead of every power of two up to the batch: capture was the
        # silent part of a pass (48 graphs per precision for 8 levels), and with three passes it
        # outlasted the 40 s a run on the H200 was given, which read as a hang after bf16.
        from service.device.cuda_graphs import CudaGraphRunner

        return CudaGraphRunner(model, graph_buckets=(cfg.batch_size,), **kw)
    return create_runner(model, cuda_graphs=False, **kw)


def run_precision_bench(cfg: PrecisionBenchConfig) -> dict:
    assets = Path(cfg.assets)
    if not all((assets / s / "labels.csv").is_file() for s in IMAGE_SETS):
        raise FileNotFoundError(f"needs {', '.join(IMAGE_SETS)} with labels.csv under {assets}")
    for precision in cfg.precisions:
        base, _, head = precision.partition("-")
        if base not in ("bf16", "fp16") or head not in ("", "head16"):
            raise ValueError(f"unknown precision variant {precision!r}; use e.g. bf16, fp16, bf16-head16")
    device = resolve_device(cfg.device)
    model = load_model(cfg.model, cfg.weights)
    levels = tuple(cfg.levels) or tuple(model.levels)
    for name in levels:
        model.level(name)  # unknown names fail before any decoding
    images, labels, names = load_images(assets, cfg.images_per_set, model.data_config)
    n_fp16 = cfg.fp16_images_per_set or cfg.images_per_set
    rows, passes, skipped = [], [], []
    start = time.perf_counter()
    for precision in ("fp32", *cfg.precisions):
        if skipped or (rows and _over(cfg, start)):  # fp32, the reference, always starts
            skipped.append(precision)
            continue
        base, _, head = precision.partition("-")
        t0 = time.perf_counter()
        runner = _make_runner(model, device, base, head, cfg, levels)
        runner.warmup()
        warm_s = time.perf_counter() - t0
        print(f"precision {precision}: runner ready in {warm_s:.1f} s ({_graphs(runner)})", file=sys.stderr)
        subset = _subset(names, n_fp16) if base == "fp16" and n_fp16 != cfg.images_per_set else slice(None)
        done = []
        for level in tqdm(levels, desc=f"{precision} levels", unit="level"):
            top1 = predict(runner, level, images[subset], cfg.batch_size)
            rows.append({"precision": precision, "level": level, "subset": subset, "top1": top1})
            done.append(level)
            if _over(cfg, start):
                break
        passes.append({"precision": precision, "warmup_s": warm_s, "seconds": time.perf_counter() - t0})
        if len(done) < len(levels):
            skipped.append(f"{precision} at {', '.join(levels[len(done) :])}")
        del runner
    # Rows can be compared only where fp32 ran at the same level.
    fp32_levels = {r["level"] for r in rows if r["precision"] == "fp32"}
    rows = [r for r in rows if r["level"] in fp32_levels]
    result = _summarize(cfg, device, rows, labels, names)
    result["levels"] = {name: model.level(name).as_dict() for name in levels}
    result["passes"] = passes
    if skipped:
        result["not_measured"] = f"time limit {cfg.time_limit_s:g} s reached; not measured: {'; '.join(skipped)}"
        print(f"precision bench: {result['not_measured']}", file=sys.stderr)
    return result


def _over(cfg: PrecisionBenchConfig, start: float) -> bool:
    return cfg.time_limit_s > 0 and time.perf_counter() - start > cfg.time_limit_s


def _graphs(runner) -> str:
    bank = getattr(runner, "bank", None)
    if bank is None:
        return "eager"
    return f"{len(bank.graphs)} CUDA graphs captured in {runner.capture_seconds:.1f} s"


def _subset(names: list[str], per_set: int) -> torch.Tensor:
    """Indices of `per_set` images of each set, evenly spread, within the loaded images."""
    idx = []
    for set_name in IMAGE_SETS:
        mine = [i for i, n in enumerate(names) if n.startswith(set_name + "/")]
        step = len(mine) / min(per_set, len(mine))
        idx += [mine[int(i * step)] for i in range(min(per_set, len(mine)))]
    return torch.tensor(idx)


def _summarize(
    cfg: PrecisionBenchConfig, device: torch.device, rows: list[dict], labels: torch.Tensor, names: list[str]
) -> dict:
    fp32 = {r["level"]: r["top1"] for r in rows if r["precision"] == "fp32"}
    table = []
    for r in rows:
        ref = fp32[r["level"]][r["subset"]]
        truth = labels[r["subset"]]
        agree = (r["top1"] == ref).float()
        table.append(
            {
                "precision": r["precision"],
                "level": r["level"],
                "images": len(ref),
                "agreement_with_fp32": agree.mean().item(),
                "disagreements": int((1 - agree).sum().item()),
                "top1": (r["top1"] == truth).float().mean().item(),
                "fp32_top1_same_images": (ref == truth).float().mean().item(),
            }
        )
    return {
        "suite": "precision",
        "environment": describe(device),
        "settings": asdict(cfg),
        "images": {s: sum(n.startswith(s + "/") for n in names) for s in IMAGE_SETS},
        "rows": table,
    }
