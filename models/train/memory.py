"""The training pool decoded once into memory, and augmented batch by batch on the device.

The first GPU run (one H200) was bound by its data loader: 14 processes decoding JPEGs and
running timm's PIL augmentation gave about 430 images/s. Here every image is decoded once,
resized (short side) and centre-cropped to `size` x `size`, and kept as one uint8 tensor
[N,3,size,size] (4500 images at 256 px: 885 MB), on the training device. Each step gathers
its batch from it and augments it there with batched tensor operations:

- random resized crop (area share in [scale_min, 1], aspect ratio in [3/4, 4/3]), horizontal
  flip and a small rotation, all as one affine resampling (`affine_grid` + `grid_sample`) to
  the model's input size;
- colour jitter: brightness, contrast and saturation factors in [1 - jitter, 1 + jitter];
- normalization with the model's mean and std.

The parameters of a step's augmentation are drawn on the CPU from a generator seeded by the
run's seed and the step, so a batch is the same on any device, and a resumed run sees exactly
the batches of the uninterrupted run.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from models.preprocess import DataConfig
from models.train.data import TrainDataError

# ITU-R 601 luma weights, as PIL's and torchvision's grayscale use.
_LUMA = (0.299, 0.587, 0.114)


def decode_one(path: Path, size: int) -> torch.Tensor:
    """uint8 [3,size,size]: short side resized to `size` (bicubic), centre crop."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))  # JPEG: let libjpeg decode at the smallest scale >= size
            img = img.convert("RGB")
            w, h = img.size
            scale = size / min(w, h)
            img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
            left, top = (img.width - size) // 2, (img.height - size) // 2
            img = img.crop((left, top, left + size, top + size))
            return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    except (OSError, UnidentifiedImageError) as exc:
        raise TrainDataError(f"cannot decode training image {path}: {exc}") from None


def decode_pool(
    rows: list[tuple[Path, int]], *, size: int, threads: int, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 [N,3,size,size], int64 labels [N]) for every row, decoded on `threads` threads."""
    images = torch.empty((len(rows), 3, size, size), dtype=torch.uint8)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        decoded = pool.map(lambda row: decode_one(row[0], size), rows)
        for i, img in enumerate(tqdm(decoded, total=len(rows), desc="decode pool", unit="img", disable=not progress)):
            images[i] = img
    labels = torch.tensor([label for _, label in rows], dtype=torch.int64)
    return images, labels


@dataclass(frozen=True)
class AugmentSettings:
    """How strongly a batch is augmented.

    Args:
        scale_min: smallest area share of the random resized crop.
        rotate_deg: largest rotation either way, in degrees (0: none).
        jitter: brightness, contrast and saturation factors are drawn from [1 - jitter, 1 + jitter].
    """

    scale_min: float = 0.25
    rotate_deg: float = 10.0
    jitter: float = 0.4


def draw_params(n: int, settings: AugmentSettings, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-sample augmentation parameters (CPU float32), from `generator` alone."""

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    area = uniform(settings.scale_min, 1.0)
    log_ratio = uniform(math.log(3 / 4), math.log(4 / 3))
    # Crop width and height as shares of the stored side; clamped to the image.
    w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    cx = w / 2 + (1 - w) * torch.rand(n, generator=generator)
    cy = h / 2 + (1 - h) * torch.rand(n, generator=generator)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    angle = uniform(-settings.rotate_deg, settings.rotate_deg) * (math.pi / 180)
    color = 1 + settings.jitter * (2 * torch.rand(n, 3, generator=generator) - 1)
    return {"w": w, "h": h, "cx": cx, "cy": cy, "flip": flip, "angle": angle, "color": color}


def identity_params(n: int) -> dict[str, torch.Tensor]:
    """No augmentation: the whole stored square, resized to the input size."""
    ones, zeros = torch.ones(n), torch.zeros(n)
    return {
        "w": ones,
        "h": ones,
        "cx": ones / 2,
        "cy": ones / 2,
        "flip": ones,
        "angle": zeros,
        "color": torch.ones(n, 3),
    }


def augment(x_u8: torch.Tensor, params: dict[str, torch.Tensor], cfg: DataConfig) -> torch.Tensor:
    """Normalized float [B,3,H,W] (the model's input size) from uint8 [B,3,S,S], on x_u8's device."""
    dev = x_u8.device
    p = {k: v.to(dev) for k, v in params.items()}
    cos, sin = p["angle"].cos(), p["angle"].sin()
    sx, sy = p["w"] * p["flip"], p["h"]
    # Output coordinates (u, v) in [-1, 1] map to input coordinates: centre + R(angle) diag(sx, sy) (u, v).
    theta = torch.stack(
        [
            torch.stack([sx * cos, -sy * sin, 2 * p["cx"] - 1], dim=1),
            torch.stack([sx * sin, sy * cos, 2 * p["cy"] - 1], dim=1),
        ],
        dim=1,
    )
    _, height, width = cfg.input_size
    grid = F.affine_grid(theta, [x_u8.shape[0], 3, height, width], align_corners=False)
    x = F.grid_sample(x_u8.float() / 255, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    brightness, contrast, saturation = (p["color"][:, i, None, None, None] for i in range(3))
    x = (x * brightness).clamp(0, 1)
    luma = torch.tensor(_LUMA, device=dev).view(1, 3, 1, 1)
    gray = (x * luma).sum(dim=1, keepdim=True)
    x = ((x - gray.mean(dim=(2, 3), keepdim=True)) * contrast + gray.mean(dim=(2, 3), keepdim=True)).clamp(0, 1)
    gray = (x * luma).sum(dim=1, keepdim=True)
    x = (gray + (x - gray) * saturation).clamp(0, 1)
    mean = torch.tensor(cfg.mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=dev).view(1, 3, 1, 1)
    return (x - mean) / std


class MemoryPool:
    """The decoded pool on the training device, served as augmented batches.

    Args:
        images: uint8 [N,3,S,S] (moved to `device`).
        labels: int64 [N] (class index or UNLABELED).
        data_config: the model's input size, mean and std.
        settings: augmentation strength; None: no augmentation (a centre resize to the input size).
        device: where batches are gathered and augmented.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        data_config: DataConfig,
        settings: AugmentSettings | None,
        device: torch.device,
    ):
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.cfg = data_config
        self.settings = settings
        self.device = device

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: list[int], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, device=self.device)
        x_u8, labels = self.images[idx], self.labels[idx]
        if self.settings is None:
            params = identity_params(len(indices))
        else:
            params = draw_params(len(indices), self.settings, generator)
        return augment(x_u8, params, self.cfg), labels
