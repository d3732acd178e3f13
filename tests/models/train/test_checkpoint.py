"""Checkpoint files: optimizer state restored only where it fits, the exported weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from models import load_model
from models.train.checkpoint import export_weights, load_checkpoint, optimizer_tensors, save_checkpoint


def test_export_fp16_halves_float_tensors(tmp_path):
    model = load_model("vit_tiny_test")
    path = export_weights(tmp_path / "m.safetensors", model.timm_model, dtype="fp16")
    assert all(t.dtype == torch.float16 for t in load_file(str(path)).values())
    load_model("vit_tiny_test", weights=path)


def test_optimizer_state_round_trips_and_refuses_another_parameter_order(tmp_path):
    model = load_model("vit_tiny_test").timm_model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    save_checkpoint(tmp_path, model=model, optimizer=optimizer, trainer={"step": 1})
    same = torch.optim.AdamW(model.parameters(), lr=1e-3)
    assert load_checkpoint(tmp_path, model=model, optimizer=same) == {"step": 1}
    a, b = optimizer_tensors(optimizer), optimizer_tensors(same)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    reordered = torch.optim.AdamW(list(model.parameters())[::-1], lr=1e-3)
    with pytest.raises(ValueError, match="does not fit this run's parameters"):
        load_checkpoint(tmp_path, model=model, optimizer=reordered)
