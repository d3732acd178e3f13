"""Fixtures of the training tests: a six-image pool and the tiny run's settings."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from models.train import TrainConfig


@pytest.fixture(scope="session")
def pool(tmp_path_factory):
    """Six small images, two of them unlabeled, and one 64 px like Tiny-ImageNet."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("data") / "pool"
    folder.mkdir()
    rows = []
    for i in range(6):
        size = 64 if i == 0 else 96
        arr = rng.integers(0, 256, size=(size, size + 8 * i, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.jpg")
        rows.append((f"img{i}.jpg", "" if i % 3 == 2 else str(i * 7), "synthetic"))
    with (folder / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "class_index", "source"])
        w.writerows(rows)
    return folder


@pytest.fixture(scope="session")
def make_cfg(pool):
    """make_cfg(out_dir, **overrides) -> the tiny run's TrainConfig on `pool` (4 steps, CPU, mixup)."""

    def make(out, **kw) -> TrainConfig:
        base = dict(
            model="vit_tiny_test",
            data_dir=str(pool),
            out_dir=str(out),
            batch_size=3,
            max_steps=4,
            warmup_steps=1,
            lr=1e-3,
            num_workers=0,
            save_every=100,
            export_dtype="fp32",
            progress=False,
            device="cpu",
            auto_augment="rand-m9-mstd0.5-inc1-mmax9",
            token_weight=0.5,
            freeze_blocks=0,  # the tiny model's first reduction is at block 0: frozen, the token term is inert
            mixup_alpha=0.4,
        )
        return TrainConfig(**(base | kw))

    return make
