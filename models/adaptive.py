"""Adaptive per-image density (SaiT's adaptive token pruning), bucketed into static levels.

SaiT keeps, per image, the smallest set of patch tokens whose class-attention mass reaches a
threshold, so an easy image (attention on a few patches) keeps few tokens and a cluttered one
keeps many. Here that rule decides *which static level* an image runs at, so that every
program stays fixed-shape (batchable, capturable as a CUDA graph):

1. Probe: run the blocks before the probe block (the first block where the sparse levels
   reduce) and the probe block's attention; take the class token's attention over the patches.
2. Need: per image, sort that attention, and count the patches whose cumulative mass reaches
   `threshold` (`needed_patches`). Threshold 1.0 needs every patch; 0.0 needs one.
3. Bucket: route the image to the cheapest level whose capacity (its share of dense GFLOPs
   times the patch count) is at least that many patches; an image that needs every patch goes
   to dense. Capacity, not the keep count at one block, so that levels with any reducer and
   schedule (prune at one block, merge at every block, ...) are candidates.

Steps 1-3 are one fixed-shape computation [B,3,H,W] -> level index [B] (`route`): no
`.item()`, `nonzero` or data-dependent shapes, so it can be captured as its own graph.

Serving a batch: the router graph runs on the batch; its B level indices are read back once
(one small device-to-host copy per batch, outside every level program); each image then joins
the queue of its level and runs in that level's captured graph, batched with other requests
at the same level. `AdaptiveDensity.forward` is that same split done in one call (for
evaluation): it reuses the probe's tokens, so an image costs exactly its level's GFLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.levels import DENSE, Level, block_macs
from models.reducers import TokenState
from models.sparse_vit import Attended, SparseViT


def needed_patches(patch_attn: torch.Tensor, threshold: float) -> torch.Tensor:
    """Smallest number of patches whose share of the class attention reaches `threshold`.

    Args:
        patch_attn: class-token attention over the patches [B,N] (any positive scale).
        threshold: attention mass to keep, in [0, 1].
    Returns: int64 [B], each in [1, N]; exactly N when threshold >= 1.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    b, n = patch_attn.shape
    if threshold >= 1.0:  # float cumsums can reach 1 early; the limit is every patch
        return torch.full((b,), n, dtype=torch.int64, device=patch_attn.device)
    share = patch_attn.float() / patch_attn.float().sum(dim=1, keepdim=True).clamp_min(1e-12)
    mass = share.sort(dim=1, descending=True).values.cumsum(dim=1)
    # Prefixes still below the threshold, plus the one patch that reaches it.
    return ((mass < threshold).sum(dim=1) + 1).clamp(max=n)


@dataclass(frozen=True)
class Bucket:
    """A static level an image can be routed to.

    `capacity_patches` is the level's share of dense GFLOPs times the patch count: the number
    of patches a uniformly thinned model of the same cost would keep. It makes levels of any
    reducer and schedule comparable with a per-image patch count.
    """

    level: Level
    capacity_patches: int


def probe(model: SparseViT, x: torch.Tensor, block: int) -> Attended:
    """Run up to and including the attention of `block` (no reduction on the way).

    Returns `Attended`: (tokens after that attention, class attention [B,N] over all tokens, keys).
    """
    state = model.embed(x)
    for i in range(block):
        state = model.block(i, state)
    return model.attend(block, state, need_cls_attn=True, need_keys=True)


class AdaptiveDensity(nn.Module):
    """Per-image density for a SparseViT: route each image to a static level by attention mass.

    Args:
        model: the SparseViT whose levels serve as buckets.
        threshold: class-attention mass each image keeps, in [0, 1].
        levels: names of the candidate levels (default: all); dense is always a candidate.
    """

    def __init__(self, model: SparseViT, *, threshold: float, levels: list[str] | None = None):
        super().__init__()
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.model = model
        self.threshold = float(threshold)
        names = list(dict.fromkeys([DENSE, *(levels or model.levels)]))
        sparse = [model.level(n) for n in names if n != DENSE and model.level(n).schedule]
        if not sparse:
            raise ValueError("adaptive density needs at least one sparse level")
        # Every candidate runs unreduced up to here, so they all share the probe's prefix.
        self.probe_block = min(lvl.schedule[0].block for lvl in sparse)
        n = model.shape.num_patches
        # Cheapest first; dense (every patch) last, as the fallback.
        buckets = [Bucket(lvl, int(lvl.gflops_ratio * n)) for lvl in sorted(sparse, key=lambda lv: lv.gflops)]
        buckets.append(Bucket(model.level(DENSE), n))
        self.buckets: tuple[Bucket, ...] = tuple(buckets)
        self.register_buffer(
            "_bucket_capacity", torch.tensor([b.capacity_patches for b in buckets], dtype=torch.int64), persistent=False
        )

    def bucket_for(self, needed: torch.Tensor) -> torch.Tensor:
        """needed patches [B] -> index into `buckets` [B]: the cheapest one with enough capacity."""
        capacity = self._bucket_capacity.to(needed.device)
        enough = capacity.view(1, -1) >= needed.view(-1, 1)  # [B, buckets]; dense always enough
        # The first True column (buckets are cheapest first); argmax of int finds it.
        idx = enough.to(torch.int8).argmax(dim=1)
        full = needed >= self.model.shape.num_patches
        return torch.where(full, torch.full_like(idx, len(self.buckets) - 1), idx)

    def _probe(self, x: torch.Tensor):
        state, cls_attn, keys = probe(self.model, x, self.probe_block)
        prefix = self.model.shape.num_prefix_tokens
        needed = needed_patches(cls_attn[:, prefix:], self.threshold)
        return self.bucket_for(needed), state, cls_attn, keys

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized images [B,3,H,W] -> bucket index [B] (fixed shape, no host sync)."""
        return self._probe(x)[0]

    def level_names(self, route: torch.Tensor) -> list[str]:
        """Bucket indices -> level names (reads the indices back to the host)."""
        return [self.buckets[i].level.name for i in route.tolist()]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluation path: (logits [B,classes], bucket index [B]).

        Splits the batch by bucket on the host (as the serving batcher does) and continues each
        group from the probe's tokens, so the prefix is computed once.
        """
        route, state, cls_attn, keys = self._probe(x)
        logits = None
        for j in route.unique().tolist():
            rows = (route == j).nonzero().flatten()
            sub = TokenState(x=state.x[rows], size=None if state.size is None else state.size[rows])
            out = self._finish(self.buckets[j].level, sub, cls_attn[rows], keys[rows])
            if logits is None:
                logits = out.new_empty((x.shape[0], out.shape[1]))
            logits[rows] = out
        return logits, route

    def _finish(self, level: Level, state: TokenState, cls_attn: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Continue `level` from the tokens after the probe block's attention."""
        model = self.model
        steps = {s.block: s for s in level.schedule}
        p = self.probe_block
        state = model.reduce_and_mlp(p, state, steps.get(p), cls_attn=cls_attn, keys=keys)
        for i in range(p + 1, model.shape.depth):
            state = model.block(i, state, steps.get(i))
        return model.forward_head(model.final_norm(state))

    def probe_gflops(self) -> float:
        """What a separate router graph costs when the level programs recompute the prefix."""
        shape = self.model.shape
        n = shape.num_patches + shape.num_prefix_tokens
        macs = shape.num_patches * shape.patch_pixels * shape.embed_dim
        macs += self.probe_block * block_macs(shape, n)
        macs += 4 * n * shape.embed_dim**2 + 2 * n * n * shape.embed_dim  # the probe's attention
        return macs / 1e9
