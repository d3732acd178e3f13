"""Dense forward that also returns class-token attention at chosen blocks.

The token-score term needs the student's class attention at the first reduction block (the
scores the prune reducer ranks by) and the teacher's at a later block. SparseViT's forward
does not expose them, so this runs the same blocks (same weights, same math as the dense
level) and keeps the rows it is asked for.
"""
from __future__ import annotations

import torch

from models.adaptive import attention_half, embed, mlp_half
from models.sparse_vit import SparseViT


def dense_with_class_attention(model: SparseViT, x: torch.Tensor, blocks: set[int]):
    """(logits [B,classes], {block: class attention over the patches [B,N]})."""
    prefix = model.shape.num_prefix_tokens
    state = embed(model, x)
    rows: dict[int, torch.Tensor] = {}
    for i, blk in enumerate(model.timm_model.blocks):
        if i in blocks:
            state, cls_attn, _ = attention_half(model, blk, state)
            rows[i] = cls_attn[:, prefix:]
            state = mlp_half(blk, state)
        else:
            state = model._block(blk, state, None)
    logits = model.forward_head(model.timm_model.norm(state.x))
    return logits, rows
