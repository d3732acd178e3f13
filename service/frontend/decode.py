"""Image bytes -> uint8 [3,H,W] with timm's eval transform, off the event loop.

Decoding and resizing run in a small thread pool (Pillow releases the GIL while it decodes
and resamples), so the asyncio loop keeps accepting requests. The pixel count is checked
from the header before any pixel is decoded: a small file that claims a huge canvas (a
decompression bomb) is refused without allocating it.
"""

from __future__ import annotations

import asyncio
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image, UnidentifiedImageError

from models.preprocess import DataConfig, pil_to_uint8
from service.errors import BadRequest

# Formats a client may send (the image/jpeg, image/png, image/webp). Opening is
# restricted to them, so Pillow never runs a parser for an exotic format on client bytes.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
CONTENT_TYPES = ("image/jpeg", "image/png", "image/webp")


def decode_image(data: bytes, cfg: DataConfig, *, max_pixels: int) -> torch.Tensor:
    """Encoded image -> uint8 [3,H,W] (resize + centre crop as timm evaluates).

    Raises:
        BadRequest: empty, not an image, truncated/corrupt, or more pixels than max_pixels.
    """
    if not data:
        raise BadRequest("empty image: the body holds no bytes")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise BadRequest("not an image: expected JPEG, PNG or WebP bytes") from None
    except Image.DecompressionBombError:
        raise BadRequest(
            f"image dimensions are over the limit of {max_pixels} pixels (SAIT_MAX_IMAGE_PIXELS)"
        ) from None
    except Exception as exc:  # a malformed header can raise many things
        raise BadRequest(f"cannot read image header: {_first_line(exc)}") from None
    width, height = img.size
    if width * height > max_pixels:
        raise BadRequest(
            f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
            f"(SAIT_MAX_IMAGE_PIXELS)"
        )
    if width < 1 or height < 1:
        raise BadRequest(f"image has no pixels ({width}x{height})")
    try:
        img.load()
        return pil_to_uint8(img, cfg)
    except Exception as exc:  # truncated JPEG ("image file is truncated"), bad chunks ...
        raise BadRequest(f"truncated or corrupt {img.format} image: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


class ImageDecoder:
    """A thread pool that decodes images for the event loop.

    Args:
        cfg: the model's data config (input size, crop_pct, interpolation).
        max_pixels: decompression-bomb guard (SAIT_MAX_IMAGE_PIXELS).
        threads: pool size; default min(4, cores).
    """

    def __init__(self, *, cfg: DataConfig, max_pixels: int, threads: int | None = None):
        self.cfg = cfg
        self.max_pixels = max_pixels
        # Pillow refuses at twice its limit by itself; below that, our own check (which names
        # the setting) answers, so Pillow's warning would only be noise in the log.
        Image.MAX_IMAGE_PIXELS = max_pixels
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        self.pool = ThreadPoolExecutor(max_workers=threads or min(4, os.cpu_count() or 1), thread_name_prefix="decode")

    async def decode(self, data: bytes) -> torch.Tensor:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: decode_image(data, self.cfg, max_pixels=self.max_pixels))

    async def decode_many(self, blobs: list[bytes]) -> list[torch.Tensor]:
        return list(await asyncio.gather(*(self.decode(b) for b in blobs)))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
