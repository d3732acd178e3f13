"""The dense forward with class-attention rows (the token-score term's input)."""

from __future__ import annotations

import torch

from models.adaptive import probe
from models.train.scores import dense_with_class_attention


def test_dense_forward_with_the_class_attention_rows_asked_for(tiny_model):
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logits, rows = dense_with_class_attention(tiny_model, x, {1, 5})
        dense = tiny_model(x, level="dense")
        _, cls_attn, _ = probe(tiny_model, x, 1)
    assert set(rows) == {1, 5} and rows[5].shape == (2, tiny_model.shape.num_patches)
    torch.testing.assert_close(logits, dense, atol=1e-5, rtol=1e-5)
    assert torch.equal(rows[1], cls_attn[:, 1:])  # the patches' share, class token dropped
