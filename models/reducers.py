"""Token reducers: pure functions over token tensors, with static output shapes.

Each reducer gets the tokens after a block's attention (class token first), the class-token
attention row and the attention keys of that block, and returns exactly `step.keep` tokens
with the class token still first. Every size below is a Python int fixed by the level, and
every data-dependent choice is a gather/scatter with static index shapes (topk, argsort,
argmax), so a level is one fixed-shape program: no `.item()`, `nonzero` or boolean masks.
Every operation is per sample, so a sample's tokens never depend on its batch mates.

Written from the papers:
- prune:   EViT (Liang et al., ICLR 2022) / SaiT: keep the patches the class token attends to
           most; optionally fuse the rest into one token, weighted by that attention.
- squeeze: TPS (Wei et al., CVPR 2023): prune, then fuse every pruned token into its most
           similar kept token ("host") by similarity-weighted averaging.
- merge:   ToMe (Bolya et al., ICLR 2023): bipartite soft matching on the attention keys,
           size-weighted averaging, sizes feed proportional attention.
- pitome:  PiToMe (Tran et al., NeurIPS 2024): an energy score over key similarities marks
           tokens in dense clusters; only the highest-energy tokens are matched and merged,
           isolated (informative) tokens are protected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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


def _scatter_add(base: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """base [B,N,...] with src [B,K,...] added at rows idx [B,K] (out of place)."""
    flat = idx.view(idx.shape[0], idx.shape[1], *([1] * (src.dim() - 2))).expand(src.shape)
    return base.scatter_add(1, flat, src)


def _sizes(state: TokenState) -> torch.Tensor:
    x = state.x
    if state.size is not None:
        return state.size
    return torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)


def _cls_first(idx: torch.Tensor) -> torch.Tensor:
    """Patch indices [B,K] -> [B,1+K] with the class token (index 0) in front."""
    cls = torch.zeros((idx.shape[0], 1), dtype=idx.dtype, device=idx.device)
    return torch.cat([cls, idx], dim=1)


def _check_keep(step: ReductionStep, n: int, lowest: int) -> None:
    if not lowest <= step.keep <= n:
        raise ValueError(f"{step.reducer} at block {step.block}: keep={step.keep} outside [{lowest}, {n}]")


# -- prune (EViT / SaiT) ---------------------------------------------------------------------
def prune(
    step: ReductionStep,
    state: TokenState,
    *,
    cls_attn: torch.Tensor | None,
    keys: torch.Tensor | None,
    num_blocks: int = 12,
    **_,
) -> TokenState:
    """Keep the class token and the patches the class token attends to most.

    After the last block's attention only the class token feeds the head, so there a prune
    is exact whichever patches it keeps: it takes a static slice and needs no scores.

    With `step.fuse` (EViT's "inattentive token fusion") the last of the `keep` slots holds the
    pruned patches averaged with their class attention as weights, so their information is
    not thrown away. The fused token keeps size 1: it is a summary, and giving it the pruned
    count would let proportional attention pull every query towards it.
    """
    x = state.x
    n = x.shape[1]
    _check_keep(step, n, 3 if step.fuse else 2)
    if _is_final_trim(step, num_blocks):
        return TokenState(x=x[:, : step.keep], size=None if state.size is None else state.size[:, : step.keep])
    scores = cls_attn[:, 1:]  # patches only
    kept_patches = step.keep - 1 - int(step.fuse)
    if not step.fuse:
        idx = _cls_first(scores.topk(kept_patches, dim=1, sorted=False).indices + 1)
        size = None if state.size is None else _gather(state.size, idx)
        return TokenState(x=_gather(x, idx), size=size)
    order = scores.argsort(dim=1, descending=True) + 1
    idx = _cls_first(order[:, :kept_patches])
    pruned = order[:, kept_patches:]
    w = _gather(cls_attn, pruned)  # [B,P]
    fused = (_gather(x, pruned) * w.unsqueeze(-1)).sum(1, keepdim=True) / w.sum(1).clamp_min(1e-12).view(-1, 1, 1)
    out = torch.cat([_gather(x, idx), fused], dim=1)
    size = None
    if state.size is not None:
        size = torch.cat([_gather(state.size, idx), torch.ones_like(state.size[:, :1])], dim=1)
    return TokenState(x=out, size=size)


# -- squeeze (TPS) ---------------------------------------------------------------------------
def squeeze(step: ReductionStep, state: TokenState, *, cls_attn: torch.Tensor, keys: torch.Tensor, **_) -> TokenState:
    """Prune by class attention, then fuse each pruned token into its most similar kept patch.

    A host h with pruned tokens P_h becomes  sum_{j in {h} ∪ P_h} w_j s_j x_j / sum w_j s_j  with
    w_j = exp(cos(k_j, k_h)) (so w_h = e) and s_j the sizes; sizes add up. The class token is
    never a host: it stays the model's clean summary.
    """
    x = state.x
    n = x.shape[1]
    _check_keep(step, n, 2)
    size = _sizes(state)
    kept_patches = step.keep - 1
    order = cls_attn[:, 1:].argsort(dim=1, descending=True) + 1
    host_idx, pruned_idx = order[:, :kept_patches], order[:, kept_patches:]
    metric = F.normalize(keys, dim=-1)
    sim = _gather(metric, pruned_idx) @ _gather(metric, host_idx).transpose(1, 2)  # [B,P,K]
    best_sim, host_of = sim.max(dim=-1)  # [B,P]
    w_pruned = best_sim.exp() * _gather(size, pruned_idx)
    w_host = math.e * _gather(size, host_idx)
    num = _scatter_add(
        _gather(x, host_idx) * w_host.unsqueeze(-1), host_of, _gather(x, pruned_idx) * w_pruned.unsqueeze(-1)
    )
    den = _scatter_add(w_host, host_of, w_pruned)
    new_size = _scatter_add(_gather(size, host_idx), host_of, _gather(size, pruned_idx))
    out = torch.cat([x[:, :1], num / den.unsqueeze(-1)], dim=1)
    return TokenState(x=out, size=torch.cat([size[:, :1], new_size], dim=1))


# -- bipartite merging (ToMe, PiToMe) --------------------------------------------------------
def _take(t: torch.Tensor, idx: torch.Tensor | slice) -> torch.Tensor:
    """Rows of t [B,N,...]: a static slice (a strided view, no copy) or per-sample indices."""
    return t[:, idx] if isinstance(idx, slice) else _gather(t, idx)


def _bipartite_merge(
    x: torch.Tensor,
    size: torch.Tensor,
    metric: torch.Tensor,
    *,
    fixed_idx: torch.Tensor | None,
    a_idx: torch.Tensor | slice,
    b_idx: torch.Tensor | slice,
    r: int,
    a_blocked: torch.Tensor | None = None,
    need_metric: bool = False,
):
    """Merge the r A-tokens with the most similar B partners into those partners.

    Tokens in `fixed_idx` pass through untouched (in front); the unmerged A tokens follow in
    their A order, then the B tokens, each the size-weighted mean of itself and what merged
    into it. With `need_metric`, `metric` (unit rows) is merged the same way so that another
    round can follow (else None is returned for it).

    Args:
        fixed_idx: [B,F] indices of tokens that are neither in A nor in B, or None.
        a_idx, b_idx: A and B, as [B,Na]/[B,Nb] indices or static slices (ToMe's alternation).
        r: merges to make, at most Na minus the blocked A tokens.
        a_blocked: [Na] or [B,Na] bool, A tokens that must never be merged (the class token).
    """
    metric_a, metric_b = _take(metric, a_idx), _take(metric, b_idx)
    best, partner = (metric_a @ metric_b.transpose(1, 2)).max(dim=-1)  # per A token: best B
    if a_blocked is not None:
        best = best.masked_fill(a_blocked, -math.inf)
    order = best.argsort(dim=1, descending=True)
    src, unm = order[:, :r], order[:, r:]
    # Keep the unmerged A tokens in their original order (puts a blocked class token first).
    unm = unm.sort(dim=1).values
    dst = _gather(partner, src)  # positions in B

    size_a, size_b = _take(size, a_idx), _take(size, b_idx)
    size_src = _gather(size_a, src)
    size_merged = _scatter_add(size_b, dst, size_src)

    def merged(t_a: torch.Tensor, t_b: torch.Tensor) -> torch.Tensor:
        num = _scatter_add(t_b * size_b.unsqueeze(-1), dst, _gather(t_a, src) * size_src.unsqueeze(-1))
        return num / size_merged.unsqueeze(-1)

    def kept(t: torch.Tensor, t_a: torch.Tensor) -> torch.Tensor:
        unmerged = _gather(t_a, unm)
        return unmerged if fixed_idx is None else torch.cat([_gather(t, fixed_idx), unmerged], dim=1)

    x_a, x_b = _take(x, a_idx), _take(x, b_idx)
    x_out = torch.cat([kept(x, x_a), merged(x_a, x_b)], dim=1)
    size_out = torch.cat([kept(size, size_a), size_merged], dim=1)
    metric_out = None
    if need_metric:
        metric_out = torch.cat([kept(metric, metric_a), F.normalize(merged(metric_a, metric_b), dim=-1)], dim=1)
    return x_out, size_out, metric_out


def merge(step: ReductionStep, state: TokenState, *, cls_attn: torch.Tensor, keys: torch.Tensor, **_) -> TokenState:
    """ToMe: alternate tokens into sets A and B, merge the r most similar A->B edges.

    One round merges at most half the tokens; a larger reduction runs several rounds (the
    round sizes depend only on the token counts, so the shapes stay static).
    """
    x, size = state.x, _sizes(state)
    _check_keep(step, x.shape[1], 2)
    metric = F.normalize(keys, dim=-1)
    while x.shape[1] > step.keep:
        n = x.shape[1]
        n_a = (n + 1) // 2
        r = min(n - step.keep, n_a - 1)  # the class token (A[0]) is never merged
        blocked = torch.arange(n_a, device=x.device) == 0
        x, size, metric = _bipartite_merge(
            x,
            size,
            metric,
            fixed_idx=None,
            a_idx=slice(0, None, 2),
            b_idx=slice(1, None, 2),
            r=r,
            a_blocked=blocked,
            need_metric=n - r > step.keep,
        )
    return TokenState(x=x, size=size)


def pitome_margin(block: int, num_blocks: int) -> float:
    """PiToMe's margin: strict similarity in early blocks, looser deeper (0.9 -> 0)."""
    return 0.9 - 0.9 * block / max(num_blocks, 1)


def energy_score(metric: torch.Tensor, margin: float, alpha: float = 1.0) -> torch.Tensor:
    """PiToMe energy of each token: mean over all tokens j of f(cos(i, j)).

    f(c) = c above the margin, alpha*(exp(c - margin) - 1) below it: close neighbours count
    fully, far ones add a small bounded penalty. High energy = part of a dense cluster of
    similar tokens (redundant); low energy = isolated (likely informative, so protected).
    """
    sim = metric @ metric.transpose(1, 2)
    f = torch.where(sim >= margin, sim, alpha * ((sim - margin).exp() - 1.0))
    return f.mean(dim=-1)


def pitome(
    step: ReductionStep, state: TokenState, *, cls_attn: torch.Tensor, keys: torch.Tensor, num_blocks: int = 12, **_
) -> TokenState:
    """PiToMe: merge r tokens among the 2r highest-energy patches; everything else is kept."""
    x, size = state.x, _sizes(state)
    _check_keep(step, x.shape[1], 2)
    metric = F.normalize(keys, dim=-1)
    margin = pitome_margin(step.block, num_blocks)
    while x.shape[1] > step.keep:
        n = x.shape[1]
        r = min(n - step.keep, (n - 1) // 2)
        energy = energy_score(metric[:, 1:], margin)
        order = energy.argsort(dim=1, descending=True) + 1  # patches, most redundant first
        cand = order[:, : 2 * r]
        fixed = _cls_first(order[:, 2 * r :])
        # Alternate the candidates (in energy order) into A and B; every A token merges.
        x, size, metric = _bipartite_merge(
            x,
            size,
            metric,
            fixed_idx=fixed,
            a_idx=cand[:, 0::2],
            b_idx=cand[:, 1::2],
            r=r,
            need_metric=n - r > step.keep,
        )
    return TokenState(x=x, size=size)


REDUCERS = {"prune": prune, "squeeze": squeeze, "merge": merge, "pitome": pitome}


def _is_final_trim(step: ReductionStep, num_blocks: int) -> bool:
    return step.reducer == "prune" and not step.fuse and step.block == num_blocks - 1


def scores_needed(step: ReductionStep | None, num_blocks: int) -> tuple[bool, bool]:
    """(class-token attention row, keys): what `step` reads, so the block computes no more."""
    if step is None or _is_final_trim(step, num_blocks):
        return False, False
    return step.reducer in ("prune", "squeeze"), step.reducer in ("squeeze", "merge", "pitome")


def reduce_tokens(
    step: ReductionStep, state: TokenState, *, cls_attn: torch.Tensor, keys: torch.Tensor, num_blocks: int = 12
) -> TokenState:
    """Apply `step.reducer`; the result has exactly `step.keep` tokens, class token first."""
    try:
        fn = REDUCERS[step.reducer]
    except KeyError:
        raise ValueError(f"unknown reducer {step.reducer!r}; known: {', '.join(REDUCERS)}") from None
    return fn(step, state, cls_attn=cls_attn, keys=keys, num_blocks=num_blocks)
