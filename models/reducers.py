"""Token reducers: pure functions over token tensors, with static output shapes.

Each reducer gets the tokens after a block's attention (class token first), the class-token
attention row and the attention keys of that block, and returns exactly `step.keep` tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from models.levels import ReductionStep


@dataclass
class TokenState:
    """Tokens [B,N,C] and, once tokens were merged, how many originals each stands for [B,N]."""

    x: torch.Tensor
    size: torch.Tensor | None


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B,N,...], idx [B,K] -> [B,K,...]."""
    shape = idx.shape + x.shape[2:]
    flat = idx.view(idx.shape[0], idx.shape[1], *([1] * (x.dim() - 2))).expand(shape)
    return torch.gather(x, 1, flat)


def prune(step: ReductionStep, state: TokenState, *, cls_attn: torch.Tensor, keys: torch.Tensor) -> TokenState:
    """SaiT/EViT: keep the class token and the patches the class token attends to most."""
    x = state.x
    keep_patches = step.keep - 1
    scores = cls_attn[:, 1:]  # patches only
    idx = scores.topk(keep_patches, dim=1, sorted=False).indices + 1
    cls_idx = torch.zeros_like(idx[:, :1])
    idx = torch.cat([cls_idx, idx], dim=1)
    size = None if state.size is None else _gather(state.size, idx)
    return TokenState(x=_gather(x, idx), size=size)


_REDUCERS = {"prune": prune}


def reduce_tokens(step: ReductionStep, state: TokenState, *, cls_attn: torch.Tensor, keys: torch.Tensor) -> TokenState:
    try:
        fn = _REDUCERS[step.reducer]
    except KeyError:
        raise ValueError(f"unknown reducer {step.reducer!r}; known: {', '.join(_REDUCERS)}") from None
    return fn(step, state, cls_attn=cls_attn, keys=keys)
