"""nvJPEG batch decode + device resize/crop is close to the PIL path. Needs CUDA."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from models.preprocess import DataConfig, pil_to_uint8
from service.gpu_decode import decode_batch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvJPEG decode on the device)"),
    pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning"),
]
CFG = DataConfig(crop_pct=0.9)


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _photo(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)


def test_device_decode_matches_pil_and_routes_other_formats_to_cpu():
    payloads = [
        _encode(_photo(500, 375, 0), "JPEG"),
        _encode(_photo(375, 500, 1), "JPEG"),
        _encode(_photo(320, 240, 2).convert("L"), "JPEG"),  # grayscale JPEG -> RGB
        _encode(_photo(256, 256, 3), "PNG"),
    ]
    batch, stats = decode_batch(payloads, CFG, device="cuda")
    assert batch.is_cuda and batch.shape == (4, 3, 224, 224) and batch.dtype == torch.uint8
    assert stats.on_device >= 2 and stats.on_device + stats.on_cpu == 4
    for row, data in zip(batch.cpu(), payloads):
        ref = pil_to_uint8(Image.open(io.BytesIO(data)), CFG)
        diff = (row.int() - ref.int()).abs()
        assert diff.float().mean() < 1.0  # nvJPEG IDCT and float bicubic vs libjpeg + PIL
        assert diff.max() <= 32
