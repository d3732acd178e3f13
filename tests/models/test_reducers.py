"""Each reducer on hand-made tokens: shapes, class token kept, sizes conserved, the paper's rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import ReductionStep
from models.reducers import REDUCERS, TokenState, energy_score, reduce_tokens

B, N, C = 2, 17, 8


def tokens(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, C, generator=g)
    keys = torch.randn(B, N, 12, generator=g)
    cls_attn = torch.rand(B, N, generator=g).softmax(-1)
    return x, keys, cls_attn


def run(reducer: str, keep: int, x, keys, cls_attn, size=None, fuse=False, block=1):
    step = ReductionStep(block=block, reducer=reducer, keep=keep, fuse=fuse)
    return reduce_tokens(step, TokenState(x=x, size=size), cls_attn=cls_attn, keys=keys, num_blocks=12)


@pytest.mark.parametrize("reducer", sorted(REDUCERS))
@pytest.mark.parametrize("keep", [16, 10, 5, 3])
def test_shape_and_class_token(reducer, keep):
    x, keys, cls_attn = tokens()
    out = run(reducer, keep, x, keys, cls_attn)
    assert out.x.shape == (B, keep, C)
    assert torch.equal(out.x[:, 0], x[:, 0])  # the class token is never merged or dropped
    if out.size is not None:
        assert out.size.shape == (B, keep)
        assert out.size[:, 0].eq(1).all()


@pytest.mark.parametrize("reducer", ["squeeze", "merge", "pitome"])
@pytest.mark.parametrize("keep", [12, 5])
def test_merging_conserves_size(reducer, keep):
    x, keys, cls_attn = tokens(1)
    size = torch.randint(1, 4, (B, N)).float()
    out = run(reducer, keep, x, keys, cls_attn, size=size)
    torch.testing.assert_close(out.size.sum(1), size.sum(1))
    # Size-weighted token sum is conserved by size-weighted averaging (merge, pitome).
    if reducer != "squeeze":
        torch.testing.assert_close(
            (out.x * out.size[..., None]).sum(1), (x * size[..., None]).sum(1), rtol=1e-5, atol=1e-4
        )


def test_prune_keeps_the_most_attended_patches():
    x, keys, cls_attn = tokens(2)
    out = run("prune", 6, x, keys, cls_attn)
    top = cls_attn[:, 1:].topk(5, dim=1).indices + 1
    for b in range(B):
        expected = {tuple(v.tolist()) for v in x[b, top[b]]}
        assert {tuple(v.tolist()) for v in out.x[b, 1:]} == expected


def test_prune_fusion_is_the_attention_weighted_mean_of_the_pruned():
    x, keys, cls_attn = tokens(3)
    out = run("prune", 6, x, keys, cls_attn, fuse=True)
    order = cls_attn[:, 1:].argsort(dim=1, descending=True) + 1
    for b in range(B):
        pruned = order[b, 4:]
        w = cls_attn[b, pruned]
        torch.testing.assert_close(out.x[b, -1], (x[b, pruned] * w[:, None]).sum(0) / w.sum())


def test_squeeze_sends_a_pruned_token_to_its_twin():
    x, keys, cls_attn = tokens(4)
    # Patch 5 is the least attended (pruned) and the exact key twin of patch 2 (most attended).
    cls_attn = torch.linspace(1, 0.1, N).repeat(B, 1)
    cls_attn[:, 5] = 0.0
    keys[:, 5] = keys[:, 2]
    out = run("squeeze", N - 1, x, keys, cls_attn)
    # Host 2 is now e*x2 + e*x5 over 2e (cos = 1): the plain mean; it stands for 2 tokens.
    torch.testing.assert_close(out.x[:, 2], (x[:, 2] + x[:, 5]) / 2)
    assert out.size[:, 2].eq(2).all() and out.size.sum(1).eq(N).all()


def test_merge_joins_the_most_similar_pairs_first():
    x, keys, cls_attn = tokens(5)
    keys = F.normalize(torch.randn(B, N, 64, generator=torch.Generator().manual_seed(9)), dim=-1)
    # Make A-token 4 (even) a copy of B-token 7 (odd), and A-token 8 nearly a copy of B-token 3.
    keys[:, 4] = keys[:, 7]
    keys[:, 8] = keys[:, 3] + 0.01
    x[:, 4] = x[:, 7] + 1.0
    out = run("merge", N - 1, x, keys, cls_attn)
    merged = (x[:, 4] + x[:, 7]) / 2
    assert any(torch.allclose(out.x[:, j], merged) for j in range(N - 1))
    out2 = run("merge", N - 2, x, keys, cls_attn)
    assert out2.size.eq(2).sum(1).eq(2).all()


def test_merge_takes_several_rounds_past_half():
    x, keys, cls_attn = tokens(6)
    out = run("merge", 3, x, keys, cls_attn)  # 17 -> 3 needs more than one bipartite round
    assert out.x.shape[1] == 3 and out.size.sum(1).eq(N).all()


def test_pitome_protects_an_isolated_token():
    g = torch.Generator().manual_seed(7)
    base = torch.randn(1, 1, 12, generator=g)
    keys = base + 0.05 * torch.randn(B, N, 12, generator=g)  # one dense cluster ...
    keys[:, 9] = -base[0, 0]  # ... and one token pointing away from it
    x, _, cls_attn = tokens(7)
    energy = energy_score(F.normalize(keys[:, 1:], dim=-1), margin=0.5)
    assert energy.argmin(dim=1).eq(8).all()  # patch 9 is the lowest-energy patch
    out = run("pitome", 6, x, keys, cls_attn)
    for b in range(B):
        assert any(torch.equal(out.x[b, j], x[b, 9]) for j in range(6))


def test_bad_keep_and_unknown_reducer_are_refused():
    x, keys, cls_attn = tokens()
    with pytest.raises(ValueError, match="keep"):
        run("merge", N + 1, x, keys, cls_attn)
    with pytest.raises(ValueError, match="keep"):
        run("prune", 2, x, keys, cls_attn, fuse=True)
    with pytest.raises(ValueError, match="unknown reducer"):
        run("shuffle", 5, x, keys, cls_attn)


@pytest.mark.parametrize("reducer,fuse", [("merge", False), ("pitome", False), ("squeeze", False), ("prune", True)])
def test_under_bf16_autocast_the_choice_and_the_tokens_are_the_fp32_ones(reducer, fuse):
    # 197 tokens with 64-d keys: in bf16 (3 significant digits) many similarities tie or swap.
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 197, 32, generator=g)
    keys = torch.randn(2, 197, 64, generator=g)
    cls_attn = torch.rand(2, 197, generator=g).softmax(-1)
    size = torch.randint(1, 4, (2, 197), generator=g).float()
    step = ReductionStep(block=4, reducer=reducer, keep=120, fuse=fuse)
    state = TokenState(x=x, size=size)
    fp32 = reduce_tokens(step, state, cls_attn=cls_attn, keys=keys, num_blocks=12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # Keys arrive in the run's precision (the attention's k); the reducer casts them up.
        bf16 = reduce_tokens(step, state, cls_attn=cls_attn, keys=keys.bfloat16().float(), num_blocks=12)
        bf16_keys = reduce_tokens(step, state, cls_attn=cls_attn, keys=keys.bfloat16(), num_blocks=12)
    torch.testing.assert_close(bf16.x, bf16_keys.x, rtol=0, atol=0)
    assert bf16.x.dtype == torch.float32
    # Same keys rounded to bf16 as input: the decisions are fp32 ones on those keys.
    ref = reduce_tokens(step, state, cls_attn=cls_attn, keys=keys.bfloat16().float(), num_blocks=12)
    torch.testing.assert_close(bf16.x, ref.x, rtol=0, atol=0)
    torch.testing.assert_close(bf16.size, ref.size, rtol=0, atol=0)
    assert fp32.x.shape == bf16.x.shape
