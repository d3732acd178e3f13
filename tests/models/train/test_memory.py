"""The in-memory pool and its on-device augmentation: fixed-size decode, exact identity, seeded draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from models.preprocess import DataConfig
from models.train.data import TrainDataError, read_train_labels
from models.train.memory import (
    AugmentSettings,
    MemoryPool,
    augment,
    decode_one,
    decode_pool,
    draw_params,
    identity_params,
)

CFG = DataConfig(
    input_size=(3, 32, 32), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), crop_pct=0.9, interpolation="bicubic"
)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(CFG.mean).view(1, 3, 1, 1)) / torch.tensor(CFG.std).view(1, 3, 1, 1)


def test_decode_keeps_the_centre_square_of_the_short_side(tmp_path):
    arr = np.zeros((40, 120, 3), dtype=np.uint8)  # wide: left third red, middle green, right third blue
    arr[:, :40, 0], arr[:, 40:80, 1], arr[:, 80:, 2] = 255, 255, 255
    Image.fromarray(arr).save(tmp_path / "wide.png")
    out = decode_one(tmp_path / "wide.png", 20)
    assert out.shape == (3, 20, 20) and out.dtype == torch.uint8
    assert out[1].float().mean() > 250 and out[0].float().mean() < 5 and out[2].float().mean() < 5
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(TrainDataError, match="cannot decode training image"):
        decode_one(tmp_path / "bad.jpg", 20)


def test_decode_pool_holds_every_image_and_label(pool):
    rows = read_train_labels(pool, pool / "labels.csv")
    images, labels = decode_pool(rows, size=48, threads=2, progress=False)
    assert images.shape == (6, 3, 48, 48) and images.dtype == torch.uint8
    assert labels.tolist() == [r[1] for r in rows]
    assert torch.equal(images[3], decode_one(rows[3][0], 48))


def test_identity_is_a_plain_resize_and_a_flip_mirrors():
    x_u8 = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ident = augment(x_u8, identity_params(2), CFG)
    resized = F.interpolate(x_u8.float() / 255, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ident, normalize(resized), atol=1e-4, rtol=0)
    flipped = identity_params(2) | {"flip": torch.tensor([-1.0, 1.0])}
    out = augment(x_u8, flipped, CFG)
    torch.testing.assert_close(out[0], ident[0].flip(-1), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1], ident[1])  # each sample follows its own parameters only


def test_a_crop_zooms_into_its_box():
    x_u8 = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    x_u8[..., :32, :32] = 200  # the top-left quarter is bright
    quarter = identity_params(1) | {"w": torch.tensor([0.5]), "h": torch.tensor([0.5])}
    quarter |= {"cx": torch.tensor([0.25]), "cy": torch.tensor([0.25])}
    out = augment(x_u8, quarter, CFG) * torch.tensor(CFG.std).view(1, 3, 1, 1) + torch.tensor(CFG.mean).view(1, 3, 1, 1)
    torch.testing.assert_close(out, torch.full_like(out, 200 / 255), atol=1e-4, rtol=0)


def test_draws_are_seeded_and_within_their_ranges():
    settings = AugmentSettings(scale_min=0.3, rotate_deg=10.0, jitter=0.4)
    a = draw_params(256, settings, torch.Generator().manual_seed(5))
    b = draw_params(256, settings, torch.Generator().manual_seed(5))
    assert all(torch.equal(a[k], b[k]) for k in a)
    area = a["w"] * a["h"]
    assert (a["w"] <= 1).all() and (a["h"] <= 1).all() and (area >= 0.3 * 0.74).all()
    assert ((a["cx"] - a["w"] / 2) >= 0).all() and ((a["cx"] + a["w"] / 2) <= 1 + 1e-6).all()
    assert set(a["flip"].tolist()) == {-1.0, 1.0} and a["angle"].abs().max() <= np.radians(10) + 1e-6
    assert a["color"].min() >= 0.6 and a["color"].max() <= 1.4


def test_the_memory_pool_serves_normalized_batches_on_its_device(pool):
    rows = read_train_labels(pool, pool / "labels.csv")
    images, labels = decode_pool(rows, size=48, threads=1, progress=False)
    mem = MemoryPool(images, labels, data_config=CFG, settings=AugmentSettings(), device=torch.device("cpu"))
    x, y = mem.batch([5, 0, 2], torch.Generator().manual_seed(1))
    again, _ = mem.batch([5, 0, 2], torch.Generator().manual_seed(1))
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [labels[5], labels[0], labels[2]]
    assert torch.equal(x, again) and torch.isfinite(x).all()
    plain = MemoryPool(images, labels, data_config=CFG, settings=None, device=torch.device("cpu"))
    x0, _ = plain.batch([1], torch.Generator().manual_seed(1))
    resized = F.interpolate(images[1:2].float() / 255, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(x0, normalize(resized), atol=1e-4, rtol=0)
