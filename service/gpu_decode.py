"""Images on the device: batched JPEG decode (nvJPEG), resize and centre crop on the GPU.

The CPU path (`models.preprocess.pil_to_uint8`, PIL) stays the reference: it serves on CPU
and decodes every format the device decoder lacks (PNG, WebP, CMYK JPEGs, ...). The device
path follows the same geometry exactly (`resize_size`, `crop_offsets`, shared with timm's eval
transform); pixels differ slightly because nvJPEG's IDCT and torch's antialiased bicubic are
not bit-identical to libjpeg + PIL (docs/precision.md reports the agreement).

Pure parts (geometry, format sniffing, the tensor resize/crop) run on any device and are
tested on CPU; `decode_batch(..., device="cuda")` needs CUDA.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from models.preprocess import DataConfig, pil_to_uint8

_JPEG_MAGIC = b"\xff\xd8\xff"
_INTERPOLATION = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}


class ImageDecodeError(ValueError):
    """An image that neither decoder can read, or one that is too large; one readable line."""


def resize_size(height: int, width: int, cfg: DataConfig) -> tuple[int, int]:
    """(new_h, new_w): the short side scaled to floor(size / crop_pct), aspect kept (timm eval)."""
    if height < 1 or width < 1:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})")
    _, out_h, _ = cfg.input_size
    scale = math.floor(out_h / cfg.crop_pct)
    if width <= height:
        return int(scale * height / width), scale
    return scale, int(scale * width / height)


def crop_offsets(height: int, width: int, out_h: int, out_w: int) -> tuple[int, int]:
    """(top, left) of the centre crop, rounded as torchvision's CenterCrop rounds them."""
    if height < out_h or width < out_w:
        raise ImageDecodeError(f"cannot crop {out_w}x{out_h} from {width}x{height}")
    return int(round((height - out_h) / 2.0)), int(round((width - out_w) / 2.0))


def is_jpeg(data: bytes) -> bool:
    return data[:3] == _JPEG_MAGIC


def resize_crop_uint8(img: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """uint8 [3,h,w] (any device) -> uint8 [3,H,W]: antialiased resize + centre crop.

    Resizes in float32 and rounds back to uint8, as PIL does internally; works the same on
    CPU and CUDA (torch's antialiased bicubic has no uint8 CUDA kernel).
    """
    _, h, w = img.shape
    _, out_h, out_w = cfg.input_size
    new_h, new_w = resize_size(h, w, cfg)
    mode = _INTERPOLATION.get(cfg.interpolation, InterpolationMode.BICUBIC)
    resized = TF.resize(img.to(torch.float32), [new_h, new_w], interpolation=mode, antialias=True)
    top, left = crop_offsets(new_h, new_w, out_h, out_w)
    crop = resized[:, top : top + out_h, left : left + out_w]
    return crop.round_().clamp_(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class DecodeStats:
    """How a batch was decoded (the device path is a fast path, not a promise)."""

    on_device: int
    on_cpu: int


def check_pixels(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the header alone; refuses decompression bombs before decoding."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Exception as exc:  # PIL raises many types for garbage bytes
        raise ImageDecodeError(f"not a readable image: {type(exc).__name__}") from None
    if w * h > max_pixels:
        raise ImageDecodeError(f"image has {w * h} pixels, more than the limit {max_pixels}")
    return w, h


def decode_cpu(data: bytes, cfg: DataConfig) -> torch.Tensor:
    """The reference path (PIL): any format PIL reads -> uint8 [3,H,W] on the host."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return pil_to_uint8(im, cfg)
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise ImageDecodeError(f"cannot decode image: {type(exc).__name__}: {exc}") from None


def _pinned(data: bytes) -> torch.Tensor:
    # nvJPEG reads the compressed bytes from the host; pinned memory makes that a DMA.
    host = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return host.pin_memory()


def decode_batch(
    payloads: list[bytes], cfg: DataConfig, *, device: str | torch.device = "cuda", max_pixels: int = 40_000_000
) -> tuple[torch.Tensor, DecodeStats]:
    """Encoded images -> uint8 [N,3,H,W] on `device`, in order.

    On CUDA, JPEGs are decoded together by nvJPEG and resized/cropped on the GPU; other
    formats, and JPEGs nvJPEG refuses (CMYK, progressive corner cases), take the CPU path and
    are uploaded from pinned memory. On CPU every image takes the PIL path.

    Args:
        payloads: encoded image bytes, one per image.
        cfg: the model's DataConfig (size, crop_pct, interpolation).
        device: "cuda" (or a CUDA device) for the device path; "cpu" for PIL only.
        max_pixels: decompression-bomb guard, checked from the header before decoding.
    """
    if not payloads:
        raise ImageDecodeError("no images to decode")
    device = torch.device(device)
    for data in payloads:
        check_pixels(data, max_pixels)
    out: list[torch.Tensor | None] = [None] * len(payloads)
    on_device = 0
    if device.type == "cuda":
        jpeg_idx = [i for i, d in enumerate(payloads) if is_jpeg(d)]
        for i, img in zip(jpeg_idx, _decode_jpegs_on_device([payloads[i] for i in jpeg_idx], device)):
            if img is not None:
                out[i] = resize_crop_uint8(img, cfg)
                on_device += 1
    on_cpu = 0
    for i, data in enumerate(payloads):
        if out[i] is None:
            img = decode_cpu(data, cfg)
            out[i] = img.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else img
            on_cpu += 1
    return torch.stack(out), DecodeStats(on_device=on_device, on_cpu=on_cpu)


def _decode_jpegs_on_device(payloads: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """nvJPEG batch decode; on a batch failure retry one by one, None for what it cannot read."""
    if not payloads:
        return []
    encoded = [_pinned(d) for d in payloads]
    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    images: list[torch.Tensor | None] = []
    for e in encoded:
        try:
            images.append(decode_jpeg(e, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            images.append(None)  # the CPU path decides whether it is readable at all
    return images
