"""The device decode path's pure parts on CPU, against the PIL reference (models.preprocess)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from models.preprocess import DataConfig, pil_to_uint8
from service.gpu_decode import (
    ImageDecodeError, check_pixels, crop_offsets, decode_batch, is_jpeg, resize_crop_uint8, resize_size,
)

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

ASSETS = Path(__file__).resolve().parents[2] / ".." / "shared" / "assets"
CFG = DataConfig(crop_pct=0.9)  # deit_tiny's eval config: resize to 248, crop 224


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=95) if fmt == "JPEG" else img.save(buf, format=fmt)
    return buf.getvalue()


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """Smooth random content (a blurred noise field): like a photo, unlike white noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)


@pytest.mark.parametrize(
    "h, w, expected",
    [(375, 500, (248, 330)), (500, 375, (330, 248)), (248, 248, (248, 248)), (64, 64, (248, 248)), (227, 227, (248, 248))],
)
def test_resize_size_scales_the_short_side_like_timm(h, w, expected):
    assert resize_size(h, w, CFG) == expected


def test_resize_size_matches_the_pil_reference_geometry(monkeypatch):
    """The size pil_to_uint8 asks PIL for is the size the device path resizes to."""
    asked = []
    original = Image.Image.resize

    def recording_resize(self, size, *args, **kwargs):
        asked.append(tuple(size))
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording_resize)
    for w, h in [(500, 333), (333, 500), (1000, 7), (7, 1000), (256, 257)]:
        asked.clear()
        pil_to_uint8(Image.new("RGB", (w, h)), CFG)
        new_h, new_w = resize_size(h, w, CFG)
        assert asked == [(new_w, new_h)]


def test_crop_offsets_round_like_torchvision_center_crop():
    assert crop_offsets(248, 330, 224, 224) == (12, 53)
    assert crop_offsets(225, 224, 224, 224) == (0, 0)  # round(0.5) == 0 (banker's), as torchvision
    assert crop_offsets(227, 224, 224, 224) == (2, 0)  # round(1.5) == 2
    with pytest.raises(ImageDecodeError, match="cannot crop"):
        crop_offsets(100, 300, 224, 224)


@pytest.mark.parametrize("w, h", [(500, 375), (375, 500), (227, 227), (64, 48)])
def test_tensor_resize_crop_is_close_to_pil(w, h):
    img = _photo(w, h)
    ref = pil_to_uint8(img, CFG)
    t = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    out = resize_crop_uint8(t, CFG)
    assert out.dtype == torch.uint8 and out.shape == ref.shape == (3, 224, 224)
    diff = (out.int() - ref.int()).abs()
    # PIL's bicubic runs in fixed point: off-by-one rounding, rarely a few levels at edges.
    assert diff.float().mean() < 0.5
    assert diff.max() <= 16


def test_decode_batch_on_cpu_is_the_pil_path_exactly():
    imgs = [_photo(500, 375, 1), _photo(300, 400, 2).convert("L")]
    payloads = [_encode(imgs[0], "JPEG"), _encode(imgs[1], "PNG")]
    batch, stats = decode_batch(payloads, CFG, device="cpu")
    assert batch.shape == (2, 3, 224, 224) and batch.dtype == torch.uint8
    assert stats.on_cpu == 2 and stats.on_device == 0
    for row, data in zip(batch, payloads):
        assert torch.equal(row, pil_to_uint8(Image.open(io.BytesIO(data)), CFG))


def test_format_sniffing_and_guards():
    jpeg = _encode(_photo(64, 64), "JPEG")
    png = _encode(_photo(64, 64), "PNG")
    assert is_jpeg(jpeg) and not is_jpeg(png)
    assert check_pixels(jpeg, 10_000) == (64, 64)
    with pytest.raises(ImageDecodeError, match="more than the limit"):
        check_pixels(jpeg, 64 * 64 - 1)
    with pytest.raises(ImageDecodeError, match="not a readable image"):
        decode_batch([b"not an image"], CFG, device="cpu")
    with pytest.raises(ImageDecodeError, match="no images"):
        decode_batch([], CFG, device="cpu")


@pytest.mark.assets
def test_torchvision_decode_plus_tensor_resize_is_close_to_pil_on_real_photos():
    files = sorted((ASSETS / "imagenet-samples").glob("*.JPEG"))[:12]
    if not files:
        pytest.skip("needs ../shared/assets/imagenet-samples (real JPEG photos)")
    for f in files:
        data = f.read_bytes()
        ref = pil_to_uint8(Image.open(io.BytesIO(data)), CFG)
        # The device path's arithmetic, with torchvision's CPU JPEG decoder standing in for nvJPEG.
        t = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        diff = (resize_crop_uint8(t, CFG).int() - ref.int()).abs()
        assert diff.float().mean() < 0.5, f.name
        assert diff.max() <= 16, f.name
