"""Image decoding: the allowed formats, and the guards against bad and oversized images."""

from __future__ import annotations

import pytest
import torch
from svc_helpers import jpeg_bytes, png_bomb, png_bytes

from models.preprocess import DataConfig
from service.errors import BadRequest
from service.frontend.decode import decode_image

CFG = DataConfig()


# -- decoding ---------------------------------------------------------------------------------------
def test_decode_formats():
    assert decode_image(jpeg_bytes(), CFG, max_pixels=10**7).shape == (3, 224, 224)
    out = decode_image(png_bytes(), CFG, max_pixels=10**7)
    assert out.dtype == torch.uint8 and out.shape == (3, 224, 224)


@pytest.mark.parametrize(
    "case,data,message",
    [
        ("empty", b"", "empty image"),
        ("not an image", b"hello, this is text", "not an image"),
        ("truncated JPEG", jpeg_bytes()[:3000], "truncated or corrupt"),
        ("bomb", png_bomb(), "over the limit"),
        ("gif is not accepted", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "not an image"),
    ],
)
def test_decode_refuses(case, data, message):
    with pytest.raises(BadRequest, match=message):
        decode_image(data, CFG, max_pixels=40_000_000)
