"""Adaptive per-image density on the tiny random ViT: static shapes, batch independence, limits."""

from __future__ import annotations

import pytest
import torch

from models import load_model
from models.adaptive import AdaptiveDensity, needed_patches, probe


@pytest.fixture(scope="module")
def model():
    m = load_model("vit_tiny_test", pretrained=False)
    # Sharpen the probe block's attention so that images differ in how many patches they need
    # (a random ViT attends almost uniformly).
    d = m.shape.embed_dim
    with torch.no_grad():
        m.timm_model.blocks[AdaptiveDensity(m, threshold=0.5).probe_block].attn.qkv.weight[: 2 * d] *= 6
    return m


@pytest.fixture(scope="module")
def images():
    return torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def _per_image(model, x, names):
    return torch.cat([model(x[i : i + 1], level=n) for i, n in enumerate(names)])


def test_needed_patches_counts_the_smallest_set_reaching_the_mass():
    attn = torch.tensor([[0.1, 0.5, 0.1, 0.3]])
    assert needed_patches(attn, 0.0).tolist() == [1]
    assert needed_patches(attn, 0.5).tolist() == [1]
    assert needed_patches(attn, 0.8).tolist() == [2]
    assert needed_patches(attn, 0.81).tolist() == [3]
    assert needed_patches(attn, 1.0).tolist() == [4]
    assert needed_patches(attn * 7, 0.81).tolist() == [3]  # scale does not matter
    with pytest.raises(ValueError, match="threshold"):
        needed_patches(attn, 1.5)


def test_buckets_cheapest_first_dense_last(model):
    ad = AdaptiveDensity(model, threshold=0.5)
    names = [b.level.name for b in ad.buckets]
    assert names[-1] == "dense" and len(names) == len(model.levels)
    gflops = [b.level.gflops for b in ad.buckets]
    assert gflops == sorted(gflops)
    keep = [b.capacity_patches for b in ad.buckets]
    assert keep == sorted(keep) and keep[-1] == model.shape.num_patches
    needed = torch.tensor([1, keep[0], keep[0] + 1, keep[-2], keep[-2] + 1, keep[-1]])
    # The cheapest bucket that holds the patches (levels may share a capacity: the first of them).
    first_holding = [next(i for i, k in enumerate(keep) if k >= n) for n in needed.tolist()]
    assert first_holding[:2] == [0, 0] and first_holding[-2:] == [len(keep) - 1] * 2
    assert ad.bucket_for(needed).tolist() == first_holding
    assert 0 < ad.probe_gflops() < model.level("dense").gflops * 0.5


def test_route_has_a_static_shape_and_is_batch_independent(model, images):
    ad = AdaptiveDensity(model, threshold=0.8)
    with torch.no_grad():
        whole = ad.route(images)
        alone = torch.cat([ad.route(images[i : i + 1]) for i in range(len(images))])
        logits, route = ad(images)
        first3, _ = ad(images[:3])
    assert whole.shape == (8,) and whole.dtype == torch.int64
    assert torch.equal(whole, alone) and torch.equal(route, whole)
    torch.testing.assert_close(first3, logits[:3], atol=1e-5, rtol=1e-5)


def test_each_image_gets_exactly_its_levels_output(model, images):
    """With a threshold where images split across levels, each row equals its level's forward."""
    with torch.no_grad():
        _, cls_attn, _ = probe(model, images, AdaptiveDensity(model, threshold=0.5).probe_block)
        for t in torch.arange(0.5, 0.99, 0.005).tolist():
            ad = AdaptiveDensity(model, threshold=t)
            if len(ad.bucket_for(needed_patches(cls_attn[:, 1:], t)).unique()) > 1:
                break
        else:
            pytest.fail("no threshold splits the images across levels")
        logits, route = ad(images)
        names = ad.level_names(route)
        assert len(set(names)) > 1
        torch.testing.assert_close(logits, _per_image(model, images, names), atol=1e-5, rtol=1e-5)


def test_threshold_limits_are_dense_and_sparsest(model, images):
    with torch.no_grad():
        full, route = AdaptiveDensity(model, threshold=1.0)(images)
        assert set(AdaptiveDensity(model, threshold=1.0).level_names(route)) == {"dense"}
        torch.testing.assert_close(full, model(images, level="dense"), atol=1e-5, rtol=1e-5)
        ad0 = AdaptiveDensity(model, threshold=0.0)
        least, route = ad0(images)
        sparsest = ad0.buckets[0].level.name
        assert set(ad0.level_names(route)) == {sparsest}
        torch.testing.assert_close(least, model(images, level=sparsest), atol=1e-5, rtol=1e-5)


def test_bad_settings_are_clear(model):
    with pytest.raises(ValueError, match="threshold"):
        AdaptiveDensity(model, threshold=-0.1)
    with pytest.raises(ValueError, match="sparse level"):
        AdaptiveDensity(model, threshold=0.5, levels=["dense"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_route_captures_as_a_cuda_graph(model, images):
    """The router has no host sync: it captures, and replays to the eager result."""
    m = load_model("vit_tiny_test", pretrained=False).cuda()
    ad = AdaptiveDensity(m, threshold=0.8)
    static_x = images.cuda()
    with torch.no_grad():
        eager = ad.route(static_x)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            ad.route(static_x)  # warm-up outside the capture
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_route = ad.route(static_x)
        graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_route, eager)
