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


# -- the pool: earliest deadline first, nothing decoded late, pixels per request (issue item 7) -------
def test_the_pool_runs_the_earliest_deadline_first():
    import threading

    from service.frontend.decode import DeadlinePool

    pool = DeadlinePool(1)
    gate, order = threading.Event(), []
    try:
        blocker = pool.submit(0.0, gate.wait)  # holds the one thread while the rest queue up
        futures = [pool.submit(d, lambda d=d: order.append(d)) for d in (30.0, None, 10.0, 20.0, 10.0)]
        gate.set()
        for f in [blocker, *futures]:
            f.result(timeout=10)
        assert order == [10.0, 10.0, 20.0, 30.0, None]
    finally:
        pool.close()


def test_an_image_whose_deadline_passed_is_not_decoded():
    import asyncio
    import time

    from service.errors import Shed
    from service.frontend.decode import ImageDecoder

    decoder = ImageDecoder(cfg=CFG, max_pixels=10**7, threads=1)
    try:
        with pytest.raises(Shed, match="deadline passed before the image was decoded") as info:
            asyncio.run(decoder.decode(jpeg_bytes(), deadline_s=time.perf_counter() - 0.001))
        assert info.value.status == 429 and info.value.headers()["Retry-After"] == "1"
        image = asyncio.run(decoder.decode(jpeg_bytes(), deadline_s=time.perf_counter() + 60))
        assert image.shape == (3, 224, 224)
    finally:
        decoder.close()


def test_a_request_over_its_pixels_in_all_is_refused_before_any_decoding(monkeypatch):
    import asyncio

    from service.frontend import decode

    decoded = []
    real = decode.pil_to_uint8
    monkeypatch.setattr(decode, "pil_to_uint8", lambda img, cfg: decoded.append(img.size) or real(img, cfg))
    decoder = decode.ImageDecoder(cfg=CFG, max_pixels=10**7, max_request_pixels=3 * 320 * 240, threads=2)
    try:
        assert len(asyncio.run(decoder.decode_many([jpeg_bytes(seed=i) for i in range(3)]))) == 3
        assert len(decoded) == 3
        with pytest.raises(BadRequest, match=r"4 images hold 307200 pixels in all.*SAIT_MAX_REQUEST_PIXELS"):
            asyncio.run(decoder.decode_many([jpeg_bytes(seed=i) for i in range(4)]))
        assert len(decoded) == 3  # not one more image decoded
        # One image is a whole request: the smaller of the two limits, named in the message.
        with pytest.raises(BadRequest, match="SAIT_MAX_REQUEST_PIXELS"):
            asyncio.run(decode.ImageDecoder(cfg=CFG, max_pixels=10**7, max_request_pixels=1000).decode(jpeg_bytes()))
    finally:
        decoder.close()
