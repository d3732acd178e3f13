"""The vectorized reducers equal a plain per-sample reading of the papers, token for token.

The references below loop over samples and tokens in Python and follow the papers' words
(EViT's fused prune, ToMe's bipartite soft matching with size-weighted averaging and a
protected class token, PiToMe's energy-ranked candidates). They are slow and obvious on
purpose: a rewrite of the reducers towards fewer, larger operators (issue 18) must keep
these outputs, order included (the next block's A/B alternation reads the order). One
deliberate change, made after the rewrite: a prune keeps its patches in image order (it kept
them in attention order), see `models.reducers.prune`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import ReductionStep
from models.reducers import TokenState, energy_score, pitome_margin, reduce_tokens

B, N, C, K = 3, 29, 8, 12


def _inputs(seed: int, *, sizes: bool):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, C, generator=g, dtype=torch.float64)
    keys = torch.randn(B, N, K, generator=g, dtype=torch.float64)
    cls_attn = torch.rand(B, N, generator=g, dtype=torch.float64).softmax(-1)
    size = torch.randint(1, 5, (B, N), generator=g).double() if sizes else None
    return x, keys, cls_attn, size


def _run(reducer, keep, x, keys, cls_attn, size, *, fuse=False, block=4):
    step = ReductionStep(block=block, reducer=reducer, keep=keep, fuse=fuse)
    return reduce_tokens(step, TokenState(x=x, size=size), cls_attn=cls_attn, keys=keys, num_blocks=12)


def _descending(values: list[float]) -> list[int]:
    return sorted(range(len(values)), key=lambda i: -values[i])


def _ref_prune_fused(x, cls_attn, keep):
    """EViT: class token, the keep-2 most attended patches (in image order), then the
    attention-weighted mean of the other patches (size 1)."""
    out = []
    for b in range(B):
        order = [i + 1 for i in _descending(cls_attn[b, 1:].tolist())]
        kept, pruned = sorted(order[: keep - 2]), order[keep - 2 :]
        w = cls_attn[b, pruned]
        fused = (x[b, pruned] * w[:, None]).sum(0) / w.sum()
        out.append(torch.cat([x[b, :1], x[b, kept], fused[None]]))
    return torch.stack(out)


def _ref_bipartite_round(x, size, metric, fixed, a, b, r):
    """One round of bipartite soft matching for one sample, over token index lists.

    Each A token's partner is its most similar B token (cosine of `metric` rows); the r A
    tokens with the most similar partners merge into them (size-weighted mean, sizes add).
    Output: the fixed tokens, the unmerged A tokens in A order, then every B token.
    """
    unit = F.normalize(metric, dim=-1)
    best, partner = [], []
    for i in a:
        sims = [float(unit[i] @ unit[j]) for j in b]
        j = max(range(len(b)), key=lambda t: sims[t])
        best.append(sims[j])
        partner.append(j)
    src = set(_descending(best)[:r])
    unm = [a[t] for t in range(len(a)) if t not in src]
    num = [x[j] * size[j] for j in b]
    mnum = [metric_row * size[j] for metric_row, j in zip(unit[b], b)]
    den = [size[j].clone() for j in b]
    for t in sorted(src):
        i, j = a[t], partner[t]
        num[j] = num[j] + x[i] * size[i]
        mnum[j] = mnum[j] + unit[i] * size[i]
        den[j] = den[j] + size[i]
    keep_idx = list(fixed) + unm
    x_out = torch.cat([x[keep_idx], torch.stack([n / d for n, d in zip(num, den)])])
    size_out = torch.cat([size[keep_idx], torch.stack(den)])
    metric_out = torch.cat([unit[keep_idx], torch.stack([m / d for m, d in zip(mnum, den)])])
    return x_out, size_out, metric_out


def _ref_merge(x, keys, size, keep):
    """ToMe: alternate tokens into A (even positions) and B (odd); the class token (A[0])
    never merges; rounds of at most |A|-1 merges until `keep` tokens are left."""
    xs, ss = [], []
    for s in range(B):
        xb, sb, mb = x[s], (torch.ones(N, dtype=x.dtype) if size is None else size[s]), keys[s]
        while len(xb) > keep:
            n = len(xb)
            a, b = list(range(2, n, 2)), list(range(1, n, 2))
            r = min(n - keep, len(a))
            xb, sb, mb = _ref_bipartite_round(xb, sb, mb, [0], a, b, r)
        xs.append(xb)
        ss.append(sb)
    return torch.stack(xs), torch.stack(ss)


def _ref_pitome(x, keys, size, keep, block):
    """PiToMe: per round, rank patches by energy; the 2r most redundant alternate into A and
    B (energy order) and all r A tokens merge; the class token and the rest are fixed."""
    margin = pitome_margin(block, 12)
    xs, ss = [], []
    for s in range(B):
        xb, sb, mb = x[s], (torch.ones(N, dtype=x.dtype) if size is None else size[s]), keys[s]
        while len(xb) > keep:
            n = len(xb)
            r = min(n - keep, (n - 1) // 2)
            energy = energy_score(F.normalize(mb[None, 1:], dim=-1), margin)[0]
            order = [i + 1 for i in _descending(energy.tolist())]
            cand, rest = order[: 2 * r], order[2 * r :]
            xb, sb, mb = _ref_bipartite_round(xb, sb, mb, [0, *rest], cand[0::2], cand[1::2], r)
        xs.append(xb)
        ss.append(sb)
    return torch.stack(xs), torch.stack(ss)


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("keep", [20, 8])
@pytest.mark.parametrize("sizes", [False, True])
def test_fused_prune_equals_the_reference(keep, sizes):
    x, keys, cls_attn, size = _inputs(1, sizes=sizes)
    out = _run("prune", keep, x, keys, cls_attn, size, fuse=True)
    _close(out.x, _ref_prune_fused(x, cls_attn, keep))
    if sizes:
        order = cls_attn[:, 1:].argsort(dim=1, descending=True)[:, : keep - 2].sort(dim=1).values + 1
        _close(out.size, torch.cat([size[:, :1], size.gather(1, order), torch.ones(B, 1).double()], 1))


def test_plain_prune_keeps_the_most_attended_patches_and_their_sizes():
    x, keys, cls_attn, size = _inputs(2, sizes=True)
    out = _run("prune", 10, x, keys, cls_attn, size)
    top = cls_attn[:, 1:].topk(9, dim=1).indices + 1
    for b in range(B):
        got = {(tuple(v.tolist()), float(s)) for v, s in zip(out.x[b, 1:], out.size[b, 1:])}
        assert got == {(tuple(x[b, i].tolist()), float(size[b, i])) for i in top[b].tolist()}
    _close(out.x[:, 0], x[:, 0])


@pytest.mark.parametrize("keep", [26, 16, 5])  # one round, one full round, several rounds
@pytest.mark.parametrize("sizes", [False, True])
def test_merge_equals_the_reference(keep, sizes):
    x, keys, cls_attn, size = _inputs(3, sizes=sizes)
    out = _run("merge", keep, x, keys, cls_attn, size)
    ref_x, ref_size = _ref_merge(x, keys, size, keep)
    _close(out.x, ref_x)
    _close(out.size, ref_size)


@pytest.mark.parametrize("keep", [22, 6])
@pytest.mark.parametrize("sizes", [False, True])
def test_pitome_equals_the_reference(keep, sizes):
    x, keys, cls_attn, size = _inputs(4, sizes=sizes)
    out = _run("pitome", keep, x, keys, cls_attn, size, block=4)
    ref_x, ref_size = _ref_pitome(x, keys, size, keep, block=4)
    _close(out.x, ref_x)
    _close(out.size, ref_size)
