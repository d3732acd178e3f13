"""The distillation losses."""

from __future__ import annotations

import torch

from models.train.data import UNLABELED
from models.train.losses import distill_kl, labelled_ce, token_kl


def test_losses():
    logits = torch.randn(4, 10)
    assert distill_kl(logits, logits, 2.0).abs() < 1e-6
    assert distill_kl(logits, torch.randn(4, 10), 2.0) > 0
    labels = torch.tensor([1, UNLABELED, 3, UNLABELED])
    assert torch.isclose(labelled_ce(logits, labels), torch.nn.functional.cross_entropy(logits[[0, 2]], labels[[0, 2]]))
    assert labelled_ce(logits, torch.full((4,), UNLABELED)) == 0
    attn = torch.rand(2, 16)
    assert token_kl(attn, attn * 3).abs() < 1e-6 and token_kl(attn, torch.rand(2, 16)) > 0
