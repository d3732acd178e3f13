"""An evaluation set: a folder of images plus a labels CSV (`filename,class_index`, ...).

Images are decoded once into uint8 crops with models.preprocess (timm's eval transform up to
ToTensor), so that evaluating many levels costs one decode per image.
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from models.preprocess import DataConfig, pil_to_uint8


class EvalSetError(ValueError):
    """A labels file or image folder that cannot be used; the message is one readable line."""


@dataclass(frozen=True)
class EvalItem:
    path: Path
    class_index: int


def read_labels(images_dir: str | Path, labels_csv: str | Path, *, limit: int | None = None) -> list[EvalItem]:
    """Rows of `labels_csv` as (image path, class index), in file order, first `limit` only.

    Args:
        images_dir: folder holding the images named in the CSV.
        labels_csv: CSV with a header holding at least `filename` and `class_index`.
        limit: keep only the first `limit` rows (None: all).
    """
    images = Path(images_dir)
    labels = Path(labels_csv)
    if not images.is_dir():
        raise EvalSetError(f"images folder not found: {images}")
    if not labels.is_file():
        raise EvalSetError(f"labels file not found: {labels}")
    if limit is not None and limit < 1:
        raise EvalSetError(f"--limit must be at least 1, got {limit}")
    with labels.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or ())
        if not {"filename", "class_index"} <= fields:
            raise EvalSetError(f"labels file {labels} needs columns filename,class_index; has {sorted(fields)}")
        items = []
        for line, row in enumerate(reader, start=2):
            try:
                cls = int(row["class_index"])
            except (TypeError, ValueError):
                raise EvalSetError(f"{labels}:{line}: class_index {row['class_index']!r} is not an integer") from None
            items.append(EvalItem(images / row["filename"], cls))
            if limit is not None and len(items) >= limit:
                break
    if not items:
        raise EvalSetError(f"labels file {labels} has no rows")
    missing = [it.path for it in items if not it.path.is_file()]
    if missing:
        raise EvalSetError(f"{len(missing)} image(s) named in {labels} are missing, e.g. {missing[0]}")
    return items


def decode_one(item: EvalItem, cfg: DataConfig) -> torch.Tensor:
    try:
        with Image.open(item.path) as img:
            return pil_to_uint8(img, cfg)
    except (OSError, UnidentifiedImageError) as exc:
        raise EvalSetError(f"cannot decode image {item.path}: {exc}") from None


def decode_items(
    items: list[EvalItem], cfg: DataConfig, *, progress: bool = True, threads: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and crop every image: (uint8 [N,3,H,W], int64 labels [N]).

    On `threads` threads (default: one per core, at most 8); Pillow releases the GIL while it
    decodes and resizes, and the crops land in file order whatever the thread count.
    """
    crops = torch.empty((len(items), *cfg.input_size), dtype=torch.uint8)
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        decoded = pool.map(lambda it: decode_one(it, cfg), items)
        for i, crop in enumerate(tqdm(decoded, total=len(items), desc="decode", unit="img", disable=not progress)):
            crops[i] = crop
    labels = torch.tensor([it.class_index for it in items], dtype=torch.int64)
    return crops, labels
