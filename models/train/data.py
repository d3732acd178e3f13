"""Training images from a folder + CSV, with labels optional, and reproducible augmentation.

Every sample's augmentation is seeded by (run seed, epoch, position), so a run resumed from a
checkpoint sees exactly the batches the uninterrupted run would have seen, whatever the
number of loader workers.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from models.preprocess import DataConfig

UNLABELED = -1


class TrainDataError(ValueError):
    """A training folder or labels file that cannot be used; one readable line."""


def read_train_labels(data_dir: str | Path, labels_csv: str | Path) -> list[tuple[Path, int]]:
    """(path, class index or UNLABELED) for every CSV row; an empty class_index is unlabeled."""
    root, labels = Path(data_dir), Path(labels_csv)
    if not root.is_dir():
        raise TrainDataError(f"training image folder not found: {root}")
    if not labels.is_file():
        raise TrainDataError(f"training labels file not found: {labels}")
    rows = []
    with labels.open(newline="") as f:
        reader = csv.DictReader(f)
        if "filename" not in (reader.fieldnames or ()):
            raise TrainDataError(f"labels file {labels} needs a filename column; has {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            raw = (row.get("class_index") or "").strip()
            try:
                cls = int(raw) if raw else UNLABELED
            except ValueError:
                raise TrainDataError(f"{labels}:{line}: class_index {raw!r} is not an integer or empty") from None
            rows.append((root / row["filename"], cls))
    if not rows:
        raise TrainDataError(f"labels file {labels} has no rows")
    missing = [p for p, _ in rows if not p.is_file()]
    if missing:
        raise TrainDataError(f"{len(missing)} image(s) named in {labels} are missing, e.g. {missing[0]}")
    return rows


def build_transform(cfg: DataConfig, *, augment: bool, auto_augment: str, crop_scale_min: float):
    import timm.data

    common = dict(input_size=cfg.input_size, interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std)
    if not augment:
        return timm.data.create_transform(**common, is_training=False, crop_pct=cfg.crop_pct)
    return timm.data.create_transform(
        **common,
        is_training=True,
        scale=(crop_scale_min, 1.0),
        hflip=0.5,
        auto_augment=auto_augment or None,
        color_jitter=0.0 if auto_augment else 0.4,
        re_prob=0.0,
    )


class SeededImages(Dataset):
    """Items are (index, seed): the seed fixes that sample's augmentation."""

    def __init__(self, rows: list[tuple[Path, int]], transform):
        self.rows = rows
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        path, label = self.rows[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except (OSError, UnidentifiedImageError) as exc:
            raise TrainDataError(f"cannot decode training image {path}: {exc}") from None
        # timm's augmentations draw from python's, numpy's and torch's global generators.
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            x = self.transform(img)
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])
        return x, label


class EpochSampler(Sampler):
    """A seeded permutation per epoch, starting at `skip` samples in (for resume)."""

    def __init__(self, n: int, *, seed: int, epoch: int, skip: int = 0):
        self.n, self.seed, self.epoch, self.skip = n, seed, epoch, skip

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        for pos in range(self.skip, self.n):
            yield order[pos], (self.seed * 1_000_003 + self.epoch) * 100_003 + pos

    def __len__(self) -> int:
        return self.n - self.skip


def epoch_loader(
    dataset: SeededImages,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    skip_batches: int,
    num_workers: int,
    pin_memory: bool,
) -> DataLoader:
    sampler = EpochSampler(len(dataset), seed=seed, epoch=epoch, skip=skip_batches * batch_size)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=num_workers, pin_memory=pin_memory
    )


def mixup(x: torch.Tensor, labels: torch.Tensor, lam: float) -> tuple[torch.Tensor, tuple[torch.Tensor, float]]:
    """Mixup of a batch with its reverse: (x·lam + x.flip(0)·(1-lam), (partner labels, lam)).

    `labelled_ce(..., mix=...)` takes the second item: it skips pairs with an unlabeled image.
    Not timm.data.Mixup, whose image blend is the same (its batch mode), because it asserts an
    even batch (batch_size may be odd here), one-hot encodes the labels (UNLABELED, -1, has no
    class: scatter fails) and draws lam from NumPy's global generator (the loop draws it from
    the step's seeded generator, so that a resumed run mixes as the uninterrupted run did).
    tests/models/train/test_data.py checks the blend against timm's and these limits.
    """
    return lam * x + (1 - lam) * x.flip(0), (labels.flip(0), lam)
