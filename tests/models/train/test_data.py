"""Training data: the labels CSV."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.data import Mixup

from models.train.data import UNLABELED, mixup, read_train_labels


def test_labels_csv_reads_empty_class_index_as_unlabeled(pool):
    rows = read_train_labels(pool, pool / "labels.csv")
    assert [r[1] for r in rows] == [0, 7, UNLABELED, 21, 28, UNLABELED]


def test_mixup_blends_as_timm_does():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 2, 3, 4])
    np.random.seed(0)
    theirs, target = Mixup(mixup_alpha=0.4, num_classes=10, label_smoothing=0.0)(x.clone(), labels)
    lam = target[0, 1].item()  # image 0 is lam of its own class (1) and 1-lam of image 3's (4)
    assert 0 < lam < 1 and target[0, 4].item() == pytest.approx(1 - lam)
    ours, (partner, ours_lam) = mixup(x, labels, lam)
    torch.testing.assert_close(ours, theirs)
    assert partner.tolist() == [4, 3, 2, 1] and ours_lam == lam


def test_mixup_takes_what_timms_refuses():
    """Why models.train.data.mixup is not timm.data.Mixup; when these fail, timm's may serve."""
    x = torch.rand(3, 3, 8, 8)
    timm_mixup = Mixup(mixup_alpha=0.4, num_classes=10, label_smoothing=0.0)
    with pytest.raises(AssertionError, match="even"):
        timm_mixup(x.clone(), torch.tensor([1, 2, 3]))  # batch_size may be odd here
    with pytest.raises(RuntimeError, match="out of bounds"):
        timm_mixup(torch.cat([x, x[:1]]), torch.tensor([1, UNLABELED, 3, 4]))  # unlabeled images
    draws = []
    for seed in (0, 1):  # its lam comes from NumPy's global generator, not from the step's
        np.random.seed(seed)
        draws.append(timm_mixup(torch.cat([x, x[:1]]), torch.tensor([1, 2, 3, 4]))[1])
    assert not torch.equal(*draws)
    mixed, (partner, lam) = mixup(x, torch.tensor([1, UNLABELED, 3]), 0.3)
    assert mixed.shape == x.shape and partner.tolist() == [3, UNLABELED, 1] and lam == 0.3


def test_the_default_randaugment_never_asks_pillow_for_a_zero_bit_posterize(tmp_path):
    """timm's increasing posterize keeps 0 bits at magnitude 10; Pillow refuses that with an error, so the
    default spec caps the magnitude at 9 (mmax9). These seeds draw magnitude 10 and a posterize."""
    from PIL import Image

    from models.preprocess import DataConfig
    from models.train.config import TrainConfig
    from models.train.data import SeededImages, build_transform

    path = tmp_path / "px.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    cfg = DataConfig(input_size=(3, 32, 32))

    def images(spec: str) -> SeededImages:
        return SeededImages([(path, 1)], build_transform(cfg, augment=True, auto_augment=spec, crop_scale_min=0.25))

    uncapped = images("rand-m9-mstd0.5-inc1")
    for seed in (234, 483):
        with pytest.raises(ValueError, match="bits must be"):
            uncapped[(0, seed)]
    default = images(TrainConfig.auto_augment)
    for seed in range(1500):
        assert default[(0, seed)][0].shape == (3, 32, 32)
