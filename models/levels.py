"""Density levels: named, static token schedules with analytic GFLOPs.

A level fixes how many tokens each block processes, so every level is a fixed-shape program
(batchable, capturable as a CUDA graph) and its cost is known without running it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DENSE = "dense"


@dataclass(frozen=True)
class ReductionStep:
    """One reduction point: after the attention of `block`, reduce to `keep` tokens.

    Args:
        block: index of the block whose attention output feeds the reducer.
        reducer: "prune", "squeeze", "merge" or "pitome".
        keep: number of tokens (class token included) that leave the reduction.
        fuse: for "prune": also append one token fusing the pruned ones (EViT); counted in keep.
    """

    block: int
    reducer: str
    keep: int
    fuse: bool = False


@dataclass(frozen=True)
class Level:
    """A named density level of one model.

    Args:
        name: "dense" or a name such as "l060" (target fraction of dense GFLOPs, hundredths).
        reducer: summary of the reducers used ("none" for dense, else e.g. "prune+merge").
        tokens_per_block: tokens entering each block's attention, class token included.
        gflops: analytic multiply-accumulates per image, in billions.
        gflops_ratio: gflops / dense gflops.
        schedule: the reduction steps, in block order.
    """

    name: str
    reducer: str
    tokens_per_block: tuple[int, ...]
    gflops: float
    gflops_ratio: float
    schedule: tuple[ReductionStep, ...] = field(default=())

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "reducer": self.reducer,
            "tokens_per_block": list(self.tokens_per_block),
            "gflops": round(self.gflops, 4),
            "gflops_ratio": round(self.gflops_ratio, 4),
        }


@dataclass(frozen=True)
class VitShape:
    """What the GFLOPs count needs to know about a ViT."""

    embed_dim: int
    depth: int
    mlp_hidden: int
    num_patches: int
    patch_pixels: int  # in_chans * patch_h * patch_w
    num_prefix_tokens: int
    num_classes: int


def block_macs(shape: VitShape, tokens_in: int, tokens_out: int | None = None) -> float:
    """Multiply-accumulates of one pre-norm block, as the token-reduction papers count them.

    Attention (qkv, q·kᵀ, attn·v, proj) runs on `tokens_in`; when the block reduces its tokens
    between attention and MLP, the MLP runs on `tokens_out`. Norms, softmax and the reducer
    itself are not counted (they are O(N·C), like the papers' counts).
    """
    c, n = shape.embed_dim, tokens_in
    m = tokens_in if tokens_out is None else tokens_out
    return 4 * n * c * c + 2 * n * n * c + 2 * m * c * shape.mlp_hidden


def model_gflops(shape: VitShape, tokens_per_block: tuple[int, ...], tokens_after: tuple[int, ...]) -> float:
    """GFLOPs (billions of MACs) for given tokens at each block's attention and MLP."""
    macs = shape.num_patches * shape.patch_pixels * shape.embed_dim  # patch embedding
    for n_attn, n_mlp in zip(tokens_per_block, tokens_after):
        macs += block_macs(shape, n_attn, n_mlp)
    macs += shape.embed_dim * shape.num_classes  # head
    return macs / 1e9
