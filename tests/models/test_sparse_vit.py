"""SparseViT mechanics on the tiny random ViT: dense exactness, batch independence, static shapes."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from models import DENSE, ReductionStep, load_model
from models.sparse_vit import SparseViT

pytestmark = pytest.mark.usefixtures("single_thread")

# Ops that make a shape depend on data or copy a device value to the host.
HOST_SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "item"}


class ForbidHostSync(TorchDispatchMode):
    """Records every aten op; fails on the ones that would break CUDA-graph capture."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.seen.add(name)
        if name in HOST_SYNC_OPS:
            raise AssertionError(f"host sync / data-dependent op in forward: {func}")
        if name == "index" and any(t is not None and t.dtype == torch.bool for t in args[1]):
            raise AssertionError("boolean-mask indexing (data-dependent shape) in forward")
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def all_reducers_model(tiny_model):
    """Default levels plus one level per reducer (and a prune-then-merge hybrid)."""
    steps = {
        "prune": (ReductionStep(1, "prune", 140), ReductionStep(3, "prune", 90)),
        "prune_fuse": (ReductionStep(1, "prune", 140, fuse=True), ReductionStep(3, "prune", 90, fuse=True)),
        "squeeze": (ReductionStep(1, "squeeze", 140), ReductionStep(3, "squeeze", 90)),
        "merge": tuple(ReductionStep(i, "merge", 197 - 30 * (i + 1)) for i in range(6)),
        "merge_big": (ReductionStep(2, "merge", 40),),  # needs several bipartite rounds
        "pitome": tuple(ReductionStep(i, "pitome", 197 - 30 * (i + 1)) for i in range(6)),
        "pitome_big": (ReductionStep(2, "pitome", 30),),
        "hybrid": (
            ReductionStep(1, "prune", 150, fuse=True),
            ReductionStep(3, "merge", 120),
            ReductionStep(4, "pitome", 90),
        ),
    }
    levels = {name: lv.schedule for name, lv in tiny_model.levels.items() if name != DENSE}
    return SparseViT(tiny_model.timm_model, schedules={**levels, **steps})


def test_dense_level_is_timms_forward(tiny_model, images):
    with torch.inference_mode():
        ours = tiny_model(images, level=DENSE)
        theirs = tiny_model.timm_model(images)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_sparse_path_with_no_reduction_equals_timm(tiny_model, images):
    """The block re-implementation (used by every sparse level) matches timm's Block."""
    m = SparseViT(tiny_model.timm_model, schedules={})
    with torch.inference_mode():
        ours = m.forward_head(m.forward_features(images, m.level(DENSE)))
        theirs = tiny_model.timm_model(images)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_every_level_gives_logits(all_reducers_model, images):
    with torch.inference_mode():
        for name in all_reducers_model.levels:
            out = all_reducers_model(images, level=name)
            assert out.shape == (4, 1000) and torch.isfinite(out).all(), name


def test_batch_independence(all_reducers_model, images):
    """A sample's logits do not depend on its batch mates (same batch size, other mates; alone)."""
    other = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    mixed = torch.cat([images[:2], other[2:]])
    with torch.inference_mode():
        for name in all_reducers_model.levels:
            a = all_reducers_model(images, level=name)
            b = all_reducers_model(mixed, level=name)
            alone = all_reducers_model(images[:1], level=name)
            assert (a[:2] - b[:2]).abs().max().item() <= 1e-5, name
            assert (a[:1] - alone).abs().max().item() <= 1e-4, name


def test_no_host_sync_and_static_token_counts(all_reducers_model, images):
    model = all_reducers_model
    counts: dict[str, list[int]] = {}

    def record(name):
        def hook(module, args):
            counts.setdefault(name, []).append(args[0].shape[1])

        return hook

    with torch.inference_mode():
        for name, _lv in model.levels.items():
            handles = [blk.attn.register_forward_pre_hook(record(name)) for blk in model.timm_model.blocks]
            try:
                with ForbidHostSync():
                    model(images, level=name)
                # Different data, same shapes.
                model(images.flip(0) * 0.5, level=name)
            finally:
                for h in handles:
                    h.remove()
            if name != DENSE:  # sparse levels call attn through SparseViT._attention, not attn()
                assert counts.get(name) is None
    assert counts[DENSE] == [197] * 6 * 2


def test_sparse_levels_run_the_advertised_token_counts(all_reducers_model, images):
    seen: list[int] = []
    original = SparseViT._attention

    def spy(attn, x, log_size, **needs):
        seen.append(x.shape[1])
        return original(attn, x, log_size, **needs)

    with torch.inference_mode():
        for name, lv in all_reducers_model.levels.items():
            if name == DENSE:
                continue
            seen.clear()
            SparseViT._attention = staticmethod(spy)
            try:
                all_reducers_model(images, level=name)
            finally:
                SparseViT._attention = staticmethod(original)
            assert tuple(seen) == lv.tokens_per_block, name


def test_level_names_reach_the_model(tiny_model, images):
    with pytest.raises(KeyError, match="unknown level"):
        tiny_model(images, level="l001")


def test_load_model_is_deterministic():
    a, b = load_model("vit_tiny_test"), load_model("vit_tiny_test")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_last_block_trim_is_exact(tiny_model, images):
    """After the last attention only the class token reaches the head: trimming changes nothing."""
    last = tiny_model.shape.depth - 1
    m = SparseViT(tiny_model.timm_model, schedules={"trim": (ReductionStep(last, "prune", 2),)})
    with torch.inference_mode():
        diff = (m(images, level="trim") - tiny_model.timm_model(images)).abs().max().item()
    assert diff <= 1e-5


@pytest.mark.parametrize("kwargs", [dict(global_pool="avg"), dict(reg_tokens=2)])
def test_rejects_vits_whose_pooling_the_reducers_would_break(kwargs):
    from timm.models.vision_transformer import VisionTransformer

    from models.sparse_vit import SparseViT

    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, **kwargs)
    with pytest.raises(ValueError, match="class-token pooling"):
        SparseViT(vit)


def test_public_parts_make_forward_features_bit_for_bit(all_reducers_model, images):
    """embed -> block per block -> final_norm is forward_features; attend + reduce_and_mlp is block."""
    m = all_reducers_model
    with torch.inference_mode():
        for name in (DENSE, "prune", "merge", "hybrid"):
            level = m.level(name)
            steps = {s.block: s for s in level.schedule}
            state = m.embed(images)
            assert state.x.shape == (4, 197, m.shape.embed_dim) and state.size is None
            for i in range(m.shape.depth):
                att = m.attend(i, state, need_cls_attn=True, need_keys=True)
                n = state.x.shape[1]
                assert att.cls_attn.shape == (4, n) and att.keys.shape == (4, n, m.shape.embed_dim)
                torch.testing.assert_close(att.cls_attn.sum(-1), torch.ones(4))
                split = m.reduce_and_mlp(i, att.state, steps.get(i), cls_attn=att.cls_attn, keys=att.keys)
                state = m.block(i, state, steps.get(i))
                assert torch.equal(split.x, state.x), (name, i)
            assert torch.equal(m.final_norm(state), m.forward_features(images, level)), name
        plain = m.attend(0, m.embed(images))
        assert plain.cls_attn is None and plain.keys is None


def test_class_attention_row_is_fp32_under_bf16_autocast():
    # The row ranks the patches a prune keeps: computed from the block's fp32 input, not from
    # bf16 q and k (whose logits round to 3 digits), it matches the fp32 run's row.
    torch.manual_seed(0)
    model = load_model("vit_tiny_test", pretrained=False).eval()
    attn = model.timm_model.blocks[2].attn
    x = torch.randn(2, 197, model.shape.embed_dim)
    size = torch.randint(1, 4, (2, 197)).float()
    with torch.no_grad():
        _, ref, _ = SparseViT._attention(attn, x, size.log(), need_cls_attn=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, row, keys = SparseViT._attention(attn, x, size.log(), need_cls_attn=True, need_keys=True)
    assert row.dtype == torch.float32 and keys.dtype == torch.bfloat16  # keys: cast up by the reducer
    torch.testing.assert_close(row, ref, rtol=1e-5, atol=1e-7)
    # The bf16 logits would not: the same row from bf16 q and k is off by far more.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        b, n, _ = x.shape
        q, k, _ = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        logits = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).float() + size.log().view(b, 1, 1, n)
        naive = logits.softmax(-1).mean(1)[:, 0]
    assert (naive - ref).abs().max() > 10 * (row - ref).abs().max()
