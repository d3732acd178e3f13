"""Request bodies for load tests: encoded JPEGs, or preprocessed UINT8 [3,224,224] tensors.

Payloads are prepared once before a run, so the generator spends no CPU on images while it
is timing requests. UINT8 tensors follow timm's eval recipe (resize the short side to
size/crop_pct with bicubic filtering, centre crop), the layout the server's UINT8 input takes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

PayloadKind = Literal["jpeg", "uint8"]
PAYLOAD_KINDS: tuple[str, ...] = ("jpeg", "uint8")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# The shared evaluation images, when this checkout sits beside ../shared/assets.
DEFAULT_IMAGE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "assets" / "imagenet-samples"


class PayloadError(ValueError):
    """Payloads that cannot be prepared (one readable line)."""


@dataclass(frozen=True)
class Payload:
    """One prepared request body.

    Args:
        name: where it came from (file name, or "synthetic-N").
        jpeg: the encoded image (always present: the native API sends it).
        uint8: the preprocessed [3,H,W] tensor as C-contiguous bytes, or None.
    """

    name: str
    jpeg: bytes
    uint8: bytes | None = None


def to_uint8_chw(img: Image.Image, *, size: int = 224, crop_pct: float = 0.9) -> np.ndarray:
    """timm eval preprocessing without normalization: uint8 [3,size,size]."""
    img = img.convert("RGB")
    short = int(size / crop_pct)  # 224 / 0.9 -> 248, as timm computes it
    w, h = img.size
    scale = short / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def _payload(name: str, img: Image.Image, jpeg: bytes | None, kind: PayloadKind, size: int) -> Payload:
    if jpeg is None:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=90)
        jpeg = buf.getvalue()
    tensor = to_uint8_chw(img, size=size).tobytes() if kind == "uint8" else None
    return Payload(name=name, jpeg=jpeg, uint8=tensor)


def load_folder(folder: str | Path, *, kind: PayloadKind = "jpeg", limit: int = 64, size: int = 224) -> list[Payload]:
    """Up to `limit` images from a folder (sorted by name, so runs repeat).

    Args:
        folder: directory of .jpg/.jpeg/.png files.
        kind: "jpeg" sends files as they are; "uint8" also prepares preprocessed tensors.
        limit: how many images to load at most (> 0).
        size: side of the UINT8 tensor.
    """
    if kind not in PAYLOAD_KINDS:
        raise PayloadError(f"unknown payload kind {kind!r}; known: {', '.join(PAYLOAD_KINDS)}")
    folder = Path(folder)
    if not folder.is_dir():
        raise PayloadError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: max(limit, 0)]
    if not files:
        raise PayloadError(f"no .jpg/.jpeg/.png images in {folder}")
    payloads = []
    for path in files:
        raw = path.read_bytes()
        try:
            img = Image.open(io.BytesIO(raw))
            img.load()
        except (OSError, Image.DecompressionBombError) as exc:
            raise PayloadError(f"cannot decode {path}: {exc}") from None
        # PNGs are re-encoded so every native request carries a JPEG.
        is_jpeg = path.suffix.lower() in (".jpg", ".jpeg")
        payloads.append(_payload(path.name, img, raw if is_jpeg else None, kind, size))
    return payloads


def synthetic(
    *, count: int = 8, kind: PayloadKind = "jpeg", side: int = 256, seed: int = 0, size: int = 224
) -> list[Payload]:
    """Random-noise images, for tests and machines without the shared image folder."""
    if kind not in PAYLOAD_KINDS:
        raise PayloadError(f"unknown payload kind {kind!r}; known: {', '.join(PAYLOAD_KINDS)}")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
        out.append(_payload(f"synthetic-{i}", Image.fromarray(pixels), None, kind, size))
    return out
