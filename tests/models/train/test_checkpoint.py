"""Checkpoint files: the exported weights."""
from __future__ import annotations

import torch
from safetensors.torch import load_file

from models import load_model
from models.train.checkpoint import export_weights


def test_export_fp16_halves_float_tensors(tmp_path):
    model = load_model("vit_tiny_test")
    path = export_weights(tmp_path / "m.safetensors", model.timm_model, dtype="fp16")
    assert all(t.dtype == torch.float16 for t in load_file(str(path)).values())
    load_model("vit_tiny_test", weights=path)
