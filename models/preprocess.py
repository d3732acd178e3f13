"""timm's evaluation transform, split at uint8 so that server and evaluation share it.

timm's eval transform is Resize(int(size / crop_pct), bicubic) -> CenterCrop(size) ->
ToTensor -> Normalize. ToTensor divides uint8 by 255, so stopping at the uint8 crop and
normalizing later (on the device, inside the runner) gives the same tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

_INTERPOLATION = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class DataConfig:
    """The eval-time input contract of a model (from timm's pretrained config)."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    @classmethod
    def from_timm(cls, timm_model: torch.nn.Module) -> DataConfig:
        import timm.data

        cfg = timm.data.resolve_model_data_config(timm_model)
        return cls(
            input_size=tuple(cfg["input_size"]),
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
            crop_pct=float(cfg.get("crop_pct", 0.875)),
            interpolation=str(cfg.get("interpolation", "bicubic")),
        )


def pil_to_uint8(img: Image.Image, cfg: DataConfig) -> torch.Tensor:
    """Resize the short side to size/crop_pct and centre-crop, as timm does: uint8 [3,H,W]."""
    _, h, w = cfg.input_size
    if img.mode != "RGB":
        img = img.convert("RGB")
    # timm: scale_size = floor(size / crop_pct); Resize(int) scales the short side to it.
    scale = math.floor(h / cfg.crop_pct)
    iw, ih = img.size
    if iw <= ih:
        new_w, new_h = scale, int(scale * ih / iw)
    else:
        new_h, new_w = scale, int(scale * iw / ih)
    img = img.resize((new_w, new_h), _INTERPOLATION.get(cfg.interpolation, Image.Resampling.BICUBIC))
    # torchvision CenterCrop rounds the offsets like this.
    top = int(round((new_h - h) / 2.0))
    left = int(round((new_w - w) / 2.0))
    img = img.crop((left, top, left + w, top + h))
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def normalize_uint8(x: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float32 normalized, on x's device (no host sync)."""
    mean = torch.tensor(cfg.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x.to(torch.float32) / 255.0 - mean) / std
