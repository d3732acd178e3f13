"""SparseViT: one timm VisionTransformer, many static density levels.

Modifications relative to timm's `VisionTransformer.forward` (timm 1.0.x):
- the dense level calls timm's own forward, unchanged (docs/architecture.md, invariant 1: dense == timm);
- a sparse level runs the same blocks with the same weights, but at each of its reduction
  points the block's attention also yields the class-token attention row (computed as
  q_cls·Kᵀ for that block only, so attention elsewhere stays fused SDPA) and the keys, and a
  reducer shrinks the tokens to a static count between the attention and the MLP;
- merged tokens carry a size; attention then adds log(size) to the logits (ToMe's
  proportional attention).
Every shape is fixed by the level: no `.item()`, `nonzero` or data-dependent sizes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.levels import DENSE, Level, ReductionStep, VitShape, model_gflops
from models.preprocess import DataConfig
from models.reducers import REDUCERS, TokenState, decisions_in_fp32, reduce_tokens, scores_needed


class Attended(NamedTuple):
    """A block's tokens after its attention (residual added), before any reduction and the MLP.

    `cls_attn` [B,N] and `keys` [B,N,C] are None unless `SparseViT.attend` was asked for them.
    """

    state: TokenState
    cls_attn: torch.Tensor | None
    keys: torch.Tensor | None


class SparseViT(nn.Module):
    """A timm VisionTransformer served at several token densities with one set of weights.

    Args:
        timm_model: a timm `VisionTransformer` with a class token (DeiT/ViT family).
        schedules: level name -> reduction steps; "dense" is added first automatically.
    """

    def __init__(self, timm_model: nn.Module, *, schedules: dict[str, tuple[ReductionStep, ...]] | None = None):
        super().__init__()
        if getattr(timm_model, "cls_token", None) is None:
            raise ValueError("SparseViT needs a ViT with a class token")
        # The reducers treat token 0 as the only protected token, and the last block's trim
        # keeps only the class token for the head: both hold for class-token pooling alone.
        if getattr(timm_model, "num_prefix_tokens", 1) != 1 or getattr(timm_model, "global_pool", "token") != "token":
            raise ValueError(
                "SparseViT needs a ViT with one class token and class-token pooling "
                f"(got {timm_model.num_prefix_tokens} prefix tokens, global_pool={timm_model.global_pool!r})"
            )
        self.timm_model = timm_model
        self.data_config = DataConfig.from_timm(timm_model)
        self.shape = vit_shape(timm_model)
        if schedules is None:
            from models.schedules import default_schedules

            schedules = default_schedules(self.shape)
        self.levels: dict[str, Level] = {DENSE: self._make_level(DENSE, ())}
        for name, steps in schedules.items():
            if name != DENSE:
                self.levels[name] = self._make_level(name, tuple(steps))

    # -- levels ---------------------------------------------------------------------------
    def level(self, name: str) -> Level:
        try:
            return self.levels[name]
        except KeyError:
            raise KeyError(f"unknown level {name!r}; known: {', '.join(self.levels)}") from None

    def _make_level(self, name: str, steps: tuple[ReductionStep, ...]) -> Level:
        n = self.shape.num_patches + self.shape.num_prefix_tokens
        by_block = {s.block: s for s in steps}
        if len(by_block) != len(steps):
            raise ValueError(f"level {name}: two reduction steps in one block")
        attn_tokens, mlp_tokens = [], []
        for i in range(self.shape.depth):
            attn_tokens.append(n)
            if i in by_block:
                if by_block[i].reducer not in REDUCERS:
                    raise ValueError(
                        f"level {name}: unknown reducer {by_block[i].reducer!r}; known: {', '.join(REDUCERS)}"
                    )
                keep = by_block[i].keep
                if not 1 < keep <= n:
                    raise ValueError(f"level {name}: block {i} keeps {keep} of {n} tokens")
                n = keep
            mlp_tokens.append(n)
        dense = model_gflops(self.shape, (attn_tokens[0],) * self.shape.depth, (attn_tokens[0],) * self.shape.depth)
        gflops = model_gflops(self.shape, tuple(attn_tokens), tuple(mlp_tokens))
        # The last block's trim to the class token (+1) is exact, so it does not name the level.
        named = [s for s in steps if not (s.block == self.shape.depth - 1 and s.reducer == "prune" and s.keep == 2)]
        reducer = "+".join(dict.fromkeys(s.reducer for s in named)) or ("prune" if steps else "none")
        return Level(name, reducer, tuple(attn_tokens), gflops, gflops / dense, steps)

    # -- forward --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, level: str = DENSE) -> torch.Tensor:
        """Normalized images [B,3,H,W] -> logits [B,num_classes] at `level`."""
        if level == DENSE:
            return self.timm_model(x)
        return self.forward_head(self.forward_features(x, self.level(level)))

    def forward_features(self, x: torch.Tensor, level: Level) -> torch.Tensor:
        """Normalized images [B,3,H,W] -> final-norm tokens at `level` (what `forward_head` takes)."""
        steps = {s.block: s for s in level.schedule}
        state = self.embed(x)
        for i in range(self.shape.depth):
            state = self.block(i, state, steps.get(i))
        return self.final_norm(state)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.timm_model.forward_head(x)

    # -- the parts forward_features is made of --------------------------------------------
    # Public so that a caller can stop between them: models.adaptive probes up to a block's
    # attention and continues each image at its own level; models.train reads class attention.
    def embed(self, x: torch.Tensor) -> TokenState:
        """Normalized images [B,3,H,W] -> the tokens entering block 0, as timm makes them.

        Patch embedding, class token and position embedding, patch dropout, pre-norm; no sizes
        (every token stands for one patch).
        """
        m = self.timm_model
        x = m.patch_embed(x)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        x = m.norm_pre(x)
        return TokenState(x=x, size=None)

    def block(self, index: int, state: TokenState, step: ReductionStep | None = None) -> TokenState:
        """Block `index` whole: `attend`, then `reduce_and_mlp` with `step` (None: no reduction).

        The class-attention row and the keys are computed only when the step's reducer needs them.
        """
        need_cls_attn, need_keys = scores_needed(step, self.shape.depth)
        attended = self.attend(index, state, need_cls_attn=need_cls_attn, need_keys=need_keys)
        return self.reduce_and_mlp(index, attended.state, step, cls_attn=attended.cls_attn, keys=attended.keys)

    def attend(
        self, index: int, state: TokenState, *, need_cls_attn: bool = False, need_keys: bool = False
    ) -> Attended:
        """First half of block `index`: its attention with the residual added.

        Args:
            need_cls_attn: also return the class token's attention row [B,N] (mean over heads).
            need_keys: also return this attention's keys [B,N,heads*head_dim].
        """
        blk = self.timm_model.blocks[index]
        log_size = state.log_size
        if log_size is None and state.size is not None:
            log_size = state.size.log()
        out, cls_attn, keys = self._attention(
            blk.attn, blk.norm1(state.x), log_size, need_cls_attn=need_cls_attn, need_keys=need_keys
        )
        x = state.x + blk.drop_path1(blk.ls1(out))
        return Attended(TokenState(x=x, size=state.size, log_size=log_size), cls_attn, keys)

    def reduce_and_mlp(
        self,
        index: int,
        state: TokenState,
        step: ReductionStep | None = None,
        *,
        cls_attn: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
    ) -> TokenState:
        """Second half of block `index`: the reduction `step` (if any), then the MLP with the residual.

        `cls_attn` and `keys` are `attend`'s, for the reducers that rank or match tokens by them.
        """
        blk = self.timm_model.blocks[index]
        if step is not None:
            state = reduce_tokens(step, state, cls_attn=cls_attn, keys=keys, num_blocks=self.shape.depth)
        x = state.x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(state.x))))
        return TokenState(x=x, size=state.size, log_size=state.log_size)

    def final_norm(self, state: TokenState) -> torch.Tensor:
        """Tokens after the last block -> the features `forward_head` takes."""
        return self.timm_model.norm(state.x)

    @staticmethod
    def _attention(
        attn: nn.Module,
        x: torch.Tensor,
        log_size: torch.Tensor | None,
        *,
        need_cls_attn: bool = False,
        need_keys: bool = False,
    ):
        """timm Attention, plus (when asked) the class-token attention row and the keys.

        `log_size` [B,N]: log of the token sizes (None: every token is one patch).
        """
        b, n, _ = x.shape
        qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        # Proportional attention: a token that stands for s merged tokens gets log(s) more logit.
        bias = None if log_size is None else log_size.view(b, 1, 1, n).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        cls_attn = keys = None
        if need_cls_attn:
            # The row decides which tokens stay: computed in fp32 whatever the run's precision
            # (a bf16 row rounds to 3 digits and near-tied patches swap places; docs/precision.md).
            cls_attn = _class_attention_fp32(attn, x, q, k, log_size)
        if need_keys:
            keys = k.transpose(1, 2).reshape(b, n, -1)  # [b, n, heads*head_dim]; the reducer matches in fp32
        out = out.transpose(1, 2).reshape(b, n, -1)
        out = attn.norm(out)
        if getattr(attn, "gate", None) is not None:
            raise NotImplementedError("gated attention is not supported")
        return attn.proj_drop(attn.proj(out)), cls_attn, keys


def _class_attention_fp32(
    attn: nn.Module, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, log_size: torch.Tensor | None
) -> torch.Tensor:
    """The class token's attention row [B,N] (mean over heads), in fp32 from the fp32 input `x`.

    The row decides which tokens stay, so it is computed in fp32 whatever the run's precision:
    a bf16 row rounds to 3 digits and near-tied patches swap places (docs/precision.md). Without
    q/k norms the logits need no fp32 keys: q_cls·k_j = (W_kᵀ q_cls)·x_j + q_cls·b_k, and the
    last term is the same for every j, so softmax drops it. That is one [N,C]x[C,heads] product
    per image instead of the [N,C]x[C,C] key projection. With q/k norms, q and k are cast up.
    """
    b, n, c = x.shape
    with decisions_in_fp32(x):
        if q.dtype in (torch.float32, torch.float64):  # an fp32 run: q and k are exact already
            logits = (q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)
        elif isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity):
            w = attn.qkv.weight.float()  # [3C, C]: rows for q, then k, then v
            bias = None if attn.qkv.bias is None else attn.qkv.bias[:c].float()
            q_cls = F.linear(x[:, 0].float(), w[:c], bias).view(b, attn.num_heads, 1, attn.head_dim)
            w_k = w[c : 2 * c].view(attn.num_heads, attn.head_dim, c)
            u = q_cls @ w_k  # [b, heads, 1, C]: W_kᵀ q_cls per head
            logits = (u * attn.scale) @ x.float().transpose(1, 2).unsqueeze(1)  # [b, heads, 1, n]
        else:
            logits = (q[:, :, :1].float() * attn.scale) @ k.float().transpose(-2, -1)
        if log_size is not None:
            logits = logits + log_size.float().view(b, 1, 1, n)
        return logits.softmax(dim=-1).mean(dim=1)[:, 0]


def vit_shape(m: nn.Module) -> VitShape:
    pe = m.patch_embed
    patch_pixels = pe.proj.in_channels * pe.proj.kernel_size[0] * pe.proj.kernel_size[1]
    blk = m.blocks[0]
    return VitShape(
        embed_dim=m.embed_dim,
        depth=len(m.blocks),
        mlp_hidden=blk.mlp.fc1.out_features,
        num_patches=pe.num_patches,
        patch_pixels=patch_pixels,
        num_prefix_tokens=m.num_prefix_tokens,
        num_classes=m.num_classes,
    )
