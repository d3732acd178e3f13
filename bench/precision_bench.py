"""Top-1 agreement of reduced precision (bf16, fp16) with fp32, per level, on real photos.

Agreement is paired: the same image, the same level, the same uint8 input; only the
precision differs. Images are preprocessed once on the CPU reference path
(models.preprocess.pil_to_uint8), so decode differences do not enter the comparison.
"""

from __future__ import annotations

import csv
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

ASSETS = Path(__file__).resolve().parents[2].parent / "shared" / "assets"
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
        cuda_graphs: run through the CUDA-graph runner when on CUDA (what serving uses).
        assets: folder holding the image sets.
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
    """Top-1 class per image at `level`."""
    tops = [runner.run(level, images[i : i + batch_size]).topk_indices[:, 0] for i in range(0, len(images), batch_size)]
    return torch.cat(tops)


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
    images, labels, names = load_images(assets, cfg.images_per_set, model.data_config)
    n_fp16 = cfg.fp16_images_per_set or cfg.images_per_set
    rows = []
    for precision in ("fp32", *cfg.precisions):
        base, _, head = precision.partition("-")
        runner = create_runner(
            model,
            device=str(device),
            precision=base,
            cuda_graphs=cfg.cuda_graphs,
            max_batch_size=cfg.batch_size,
            top_k=1,
            fp32_head=head != "head16",
        )
        runner.warmup()
        subset = _subset(names, n_fp16) if base == "fp16" and n_fp16 != cfg.images_per_set else slice(None)
        for level in tqdm(model.levels, desc=f"{precision} levels", unit="level"):
            top1 = predict(runner, level, images[subset], cfg.batch_size)
            rows.append({"precision": precision, "level": level, "subset": subset, "top1": top1})
        del runner
    result = _summarize(cfg, device, rows, labels, names)
    result["levels"] = {name: level.as_dict() for name, level in model.levels.items()}
    return result


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
