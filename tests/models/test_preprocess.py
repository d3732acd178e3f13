"""models.preprocess (uint8 crop, then normalize) equals timm's own eval transform."""

from __future__ import annotations

import pytest
import timm
import timm.data
import torch
from PIL import Image

from models.preprocess import DataConfig, normalize_uint8, pil_to_uint8

DEIT_TINY = "deit_tiny_patch16_224"


@pytest.fixture(scope="module")
def cfg_and_transform():
    with torch.device("meta"):
        model = timm.create_model(DEIT_TINY, pretrained=False)
    data_cfg = timm.data.resolve_model_data_config(model)
    return DataConfig.from_timm(model), timm.data.create_transform(**data_cfg, is_training=False)


def some_images(assets_dir):
    """Real photos of several shapes: landscape, portrait, pre-scaled 227x227, full-size."""
    samples = sorted((assets_dir / "imagenet-samples").glob("*.JPEG"))[:4]
    val = sorted((assets_dir / "imagenet-val").glob("*.JPEG"))
    picked = samples + val[:2]
    with_sizes = [(p, Image.open(p).size) for p in val[:200]]
    picked += [p for p, s in with_sizes if s != (227, 227)][:2]
    return picked


def test_deit_tiny_data_config(cfg_and_transform):
    cfg, _ = cfg_and_transform
    assert cfg.input_size == (3, 224, 224)
    assert cfg.crop_pct == pytest.approx(0.9) and cfg.interpolation == "bicubic"


def test_equals_timm_eval_transform_on_real_images(assets_dir, cfg_and_transform):
    cfg, timm_tf = cfg_and_transform
    paths = some_images(assets_dir)
    assert len(paths) >= 6
    for path in paths:
        with Image.open(path) as img:
            ref = timm_tf(img.convert("RGB"))
            ours = normalize_uint8(pil_to_uint8(img, cfg).unsqueeze(0), cfg)[0]
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max().item() <= 1e-5, path.name


@pytest.mark.parametrize("size, mode", [((300, 200), "RGB"), ((200, 300), "L"), ((224, 224), "RGBA"), ((64, 64), "P")])
def test_equals_timm_eval_transform_on_odd_shapes_and_modes(cfg_and_transform, size, mode):
    cfg, timm_tf = cfg_and_transform
    g = torch.Generator().manual_seed(0)
    arr = torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8, generator=g).numpy()
    img = Image.fromarray(arr, "RGB").convert(mode)
    ref = timm_tf(img.convert("RGB"))
    ours = normalize_uint8(pil_to_uint8(img, cfg).unsqueeze(0), cfg)[0]
    assert (ours - ref).abs().max().item() <= 1e-5
