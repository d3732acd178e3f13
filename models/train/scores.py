"""Dense forward that also returns class-token attention at chosen blocks.

The token-score term needs the student's class attention at the first reduction block (the
scores the prune reducer ranks by) and the teacher's at a later block. SparseViT's forward
does not expose them, so this runs the same blocks through SparseViT's public parts (same
weights, same math as the dense level) and keeps the rows it is asked for.
"""

from __future__ import annotations

import torch

from models.sparse_vit import SparseViT


def dense_with_class_attention(model: SparseViT, x: torch.Tensor, blocks: set[int]):
    """(logits [B,classes], {block: class attention over the patches [B,N]})."""
    prefix = model.shape.num_prefix_tokens
    state = model.embed(x)
    rows: dict[int, torch.Tensor] = {}
    for i in range(model.shape.depth):
        if i in blocks:
            state, cls_attn, _ = model.attend(i, state, need_cls_attn=True)
            rows[i] = cls_attn[:, prefix:]
            state = model.reduce_and_mlp(i, state)
        else:
            state = model.block(i, state)
    logits = model.forward_head(model.final_norm(state))
    return logits, rows
