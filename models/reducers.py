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
    """Tokens [B,N,C] and, once tokens were merged, how many originals each stands for [B,N].

    `log_size` caches log(size) for proportional attention: computed by the first block after a
    reduction and handed on until the next one (one operator per reduction, not per block).
    """

    x: torch.Tensor
    size: torch.Tensor | None
    log_size: torch.Tensor | None = None


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B,N,...], idx [B,K] -> [B,K,...] (the index is expanded as a view: one operator)."""
    shape = idx.shape + x.shape[2:]
    flat = idx.view(idx.shape[0], idx.shape[1], *([1] * (x.dim() - 2))).expand(shape)
    return torch.gather(x, 1, flat)


def _check_keep(step: ReductionStep, n: int, lowest: int) -> None:
    if not lowest <= step.keep <= n:
        raise ValueError(f"{step.reducer} at block {step.block}: keep={step.keep} outside [{lowest}, {n}]")


# Merging carries tokens and sizes as one tensor [B,N,C+1] = (size * x, size): a merge is then a
# sum, so one gather and one scatter-add move tokens and sizes together, and several rounds
# divide once at the end (a size-weighted mean of size-weighted means is the overall one).
def _weighted(state: TokenState) -> torch.Tensor:
    x = state.x
    if state.size is None:
        return torch.cat([x, x.new_ones(x.shape[:2] + (1,))], dim=-1)
    size = state.size.unsqueeze(-1)
    return torch.cat([x * size, size], dim=-1)


def _unweighted(xs: torch.Tensor) -> TokenState:
    return TokenState(x=xs[..., :-1] / xs[..., -1:], size=xs[..., -1])


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

    Operators: top-k, a sort of the kept indices, one gather (two with sizes), a cat; fusion
    adds a scatter of zeros over the kept patches' weights and one weighted sum (a batched matmul).
    """
    x = state.x
    n = x.shape[1]
    _check_keep(step, n, 3 if step.fuse else 2)
    if _is_final_trim(step, num_blocks):
        return TokenState(x=x[:, : step.keep], size=None if state.size is None else state.size[:, : step.keep])
    scores = cls_attn[:, 1:]  # patches only: the class token is kept by slicing, not by a mask
    patches = x[:, 1:]
    kept_patches = step.keep - 1 - int(step.fuse)
    # The kept patches stay in their image order, not in attention order: a merge that follows
    # alternates tokens into its sets A and B by position, and in attention order two near-tied
    # scores that swap (another precision, another batch's kernels) would reshuffle A and B for
    # every token after them. Sorted, a swap moves one token (l040's bf16 agreement with fp32
    # rose from 84.5 % to 94 % on 200 images with this alone).
    top = scores.topk(kept_patches, dim=1, sorted=False).indices.sort(dim=1).values
    parts = [x[:, :1], _gather(patches, top)]
    size = None if state.size is None else [state.size[:, :1], _gather(state.size[:, 1:], top)]
    if step.fuse:
        w = scores.scatter(1, top, 0.0).to(x.dtype)  # the pruned patches' weights, kept ones zeroed
        fused = (w.unsqueeze(1) @ patches) / w.sum(1).clamp_min(1e-12).view(-1, 1, 1)
        parts.append(fused)
        if size is not None:
            size.append(torch.ones_like(state.size[:, :1]))
    return TokenState(x=torch.cat(parts, dim=1), size=None if size is None else torch.cat(size, dim=1))


# -- squeeze (TPS) ---------------------------------------------------------------------------
def squeeze(step: ReductionStep, state: TokenState, *, cls_attn: torch.Tensor, keys: torch.Tensor, **_) -> TokenState:
    """Prune by class attention, then fuse each pruned token into its most similar kept patch.

    A host h with pruned tokens P_h becomes  sum_{j in {h} ∪ P_h} w_j s_j x_j / sum w_j s_j  with
    w_j = exp(cos(k_j, k_h)) (so w_h = e) and s_j the sizes; sizes add up. The class token is
    never a host: it stays the model's clean summary.
    """
    x = state.x
    _check_keep(step, x.shape[1], 2)
    kept_patches = step.keep - 1
    order = cls_attn[:, 1:].argsort(dim=1, descending=True)
    host_idx, pruned_idx = order[:, :kept_patches], order[:, kept_patches:]
    metric = F.normalize(keys[:, 1:], dim=-1)
    sim = _gather(metric, pruned_idx) @ _gather(metric, host_idx).transpose(1, 2)  # [B,P,K]
    best_sim, host_of = sim.max(dim=-1)  # [B,P]
    # Tokens and sizes together (see _weighted), with the similarity weights on top: the
    # host's weight is e (cos = 1), a pruned token's exp(cos with its host).
    xs = _weighted(state)[:, 1:]
    hosts = _gather(xs, host_idx)
    w_host = hosts * math.e
    w_pruned = _gather(xs, pruned_idx) * best_sim.exp().unsqueeze(-1).to(xs.dtype)
    num = w_host.scatter_add(1, host_of.unsqueeze(-1).expand_as(w_pruned), w_pruned)
    # Sizes add plainly: the pruned tokens' own size channel, without the similarity weight.
    size_sum = hosts[..., -1].scatter_add(1, host_of, _gather(xs[..., -1], pruned_idx))
    out = torch.cat([x[:, :1], num[..., :-1] / num[..., -1:]], dim=1)
    size_cls = x.new_ones(x.shape[0], 1) if state.size is None else state.size[:, :1]
    return TokenState(x=out, size=torch.cat([size_cls, size_sum], dim=1))


# -- bipartite merging (ToMe, PiToMe) --------------------------------------------------------
def _take(t: torch.Tensor, idx: torch.Tensor | slice) -> torch.Tensor:
    """Rows of t [B,N,...]: a static slice (a strided view, no copy) or per-sample indices."""
    return t[:, idx] if isinstance(idx, slice) else _gather(t, idx)


def _bipartite_round(
    xs: torch.Tensor,
    metric: torch.Tensor,
    *,
    fixed: torch.Tensor | slice,
    a_idx: torch.Tensor | slice,
    b_idx: torch.Tensor | slice,
    r: int,
) -> torch.Tensor:
    """Merge the r A-tokens with the most similar B partners into those partners.

    `xs` is the weighted form (size * x, size) of `_weighted` (more channels may ride along),
    `metric` the unit rows that decide. The fixed tokens pass through untouched (in front),
    the unmerged A tokens follow in their A order, then the B tokens with what merged into them
    added. The class token is never in A or B: callers pass it in `fixed` (a slice).

    Args:
        fixed, a_idx, b_idx: [B,F]/[B,Na]/[B,Nb] indices or static slices (ToMe's alternation).
        r: merges to make, at most Na.
    """
    best, partner = (_take(metric, a_idx) @ _take(metric, b_idx).transpose(1, 2)).max(dim=-1)  # per A: best B
    order = best.argsort(dim=1, descending=True)
    src, unm = order[:, :r], order[:, r:].sort(dim=1).values  # unmerged A tokens keep their A order
    xs_a = _take(xs, a_idx)
    merged = _take(xs, b_idx).scatter_add(
        1, _gather(partner, src).unsqueeze(-1).expand(-1, -1, xs.shape[-1]), _gather(xs_a, src)
    )
    return torch.cat([_take(xs, fixed), _gather(xs_a, unm), merged], dim=1)


def _merge_rounds(state: TokenState, keys: torch.Tensor, keep: int, plan_round) -> TokenState:
    """Bipartite rounds until `keep` tokens are left; `plan_round(n, metric)` -> (fixed, a, b, r).

    One round merges at most about half the tokens, so a larger reduction takes several (the
    round sizes depend only on token counts, so shapes stay static). A later round matches on
    the merged tokens' keys, the normalized size-weighted mean of the unit keys: they ride
    along as (size * unit key) channels of the same gather and scatter, only when a round
    follows that reads them.
    """
    xs, metric = _weighted(state), F.normalize(keys, dim=-1)
    c = state.x.shape[-1]
    while True:
        fixed, a_idx, b_idx, r = plan_round(xs.shape[1], metric)
        last = xs.shape[1] - r <= keep
        carried = xs if last else torch.cat([xs, metric * xs[..., -1:]], dim=-1)
        carried = _bipartite_round(carried, metric, fixed=fixed, a_idx=a_idx, b_idx=b_idx, r=r)
        if last:
            return _unweighted(carried)
        xs, metric = carried[..., : c + 1], F.normalize(carried[..., c + 1 :], dim=-1)


def merge(step: ReductionStep, state: TokenState, *, cls_attn: torch.Tensor, keys: torch.Tensor, **_) -> TokenState:
    """ToMe: alternate tokens into sets A and B, merge the r most similar A->B edges.

    The class token (position 0, in A) never merges: it is sliced off, not masked. One round
    merges at most half the tokens; a larger reduction runs several rounds.
    """
    _check_keep(step, state.x.shape[1], 2)

    def plan_round(n: int, metric):
        return slice(0, 1), slice(2, None, 2), slice(1, None, 2), min(n - step.keep, (n - 1) // 2)

    return _merge_rounds(state, keys, step.keep, plan_round)


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
    _check_keep(step, state.x.shape[1], 2)
    margin = pitome_margin(step.block, num_blocks)

    def plan_round(n: int, metric):
        r = min(n - step.keep, (n - 1) // 2)
        order = energy_score(metric[:, 1:], margin).argsort(dim=1, descending=True) + 1  # most redundant first
        cand = order[:, : 2 * r]
        fixed = torch.cat([torch.zeros_like(order[:, :1]), order[:, 2 * r :]], dim=1)
        # Alternate the candidates (in energy order) into A and B; every A token merges.
        return fixed, cand[:, 0::2], cand[:, 1::2], r

    return _merge_rounds(state, keys, step.keep, plan_round)


REDUCERS = {"prune": prune, "squeeze": squeeze, "merge": merge, "pitome": pitome}


def _is_final_trim(step: ReductionStep, num_blocks: int) -> bool:
    return step.reducer == "prune" and not step.fuse and step.block == num_blocks - 1


def scores_needed(step: ReductionStep | None, num_blocks: int) -> tuple[bool, bool]:
    """(class-token attention row, keys): what `step` reads, so the block computes no more."""
    if step is None or _is_final_trim(step, num_blocks):
        return False, False
    return step.reducer in ("prune", "squeeze"), step.reducer in ("squeeze", "merge", "pitome")


def decisions_in_fp32(like: torch.Tensor):
    """Autocast off for the code that decides which tokens stay or merge.

    Under bf16/fp16 autocast a similarity or attention score rounds to 3 significant digits,
    and among ~200 tokens many scores then tie or swap order: the run's precision would
    pick other tokens than fp32 does. Scores, sorts and matching therefore run in fp32 (the
    callers cast their inputs up); the tokens themselves keep the run's dtype, and the few
    small matmuls this covers cost little next to the block's attention and MLP.
    """
    return torch.autocast(device_type=like.device.type, enabled=False)


def reduce_tokens(
    step: ReductionStep, state: TokenState, *, cls_attn: torch.Tensor, keys: torch.Tensor, num_blocks: int = 12
) -> TokenState:
    """Apply `step.reducer`; the result has exactly `step.keep` tokens, class token first.

    The scores come in fp32 (`cls_attn`) or are cast up (`keys`): see `decisions_in_fp32`.
    """
    try:
        fn = REDUCERS[step.reducer]
    except KeyError:
        raise ValueError(f"unknown reducer {step.reducer!r}; known: {', '.join(REDUCERS)}") from None
    with decisions_in_fp32(state.x):
        return fn(step, state, cls_attn=_at_least_fp32(cls_attn), keys=_at_least_fp32(keys), num_blocks=num_blocks)


def _at_least_fp32(t: torch.Tensor | None) -> torch.Tensor | None:
    """bf16/fp16 scores cast up to fp32; fp32 and fp64 ones as they are."""
    return t if t is None or t.dtype in (torch.float32, torch.float64) else t.float()
