"""CUDA-graph planning on the CPU: which graph serves a batch, capture order, padding is safe."""

from __future__ import annotations

import pytest
import torch

from models import load_model
from service.device.buckets import batch_buckets, pad_to_bucket
from service.device.cuda_graphs import CudaGraphRunner, GraphKey, GraphPlan, pool_segment_bytes
from service.device.runner import InferenceStep


def test_plan_selects_a_frozen_key_and_falls_back_above_the_largest_bucket():
    plan = GraphPlan(levels=("dense", "l060"), buckets=batch_buckets(8))
    key = plan.select("l060", 3)
    assert key == GraphKey("l060", 4)
    assert hash(key) == hash(GraphKey("l060", 4))
    with pytest.raises(AttributeError):
        key.batch = 8  # frozen: keys are safe as dict keys
    assert plan.select("dense", 9) is None
    with pytest.raises(KeyError, match="captured: dense, l060"):
        plan.select("l050", 1)


def test_plan_captures_every_level_and_bucket_largest_first():
    plan = GraphPlan(levels=("dense", "l060"), buckets=(1, 2, 4))
    order = plan.capture_order()
    assert set(order) == {GraphKey(lv, b) for lv in ("dense", "l060") for b in (1, 2, 4)}
    assert [k.batch for k in order] == [4, 4, 2, 2, 1, 1]
    assert order[0] == GraphKey("dense", 4)


def test_graph_runner_refuses_a_cpu_device():
    model = load_model("vit_tiny_test", pretrained=False)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        CudaGraphRunner(model, device="cpu", precision="fp32", max_batch_size=4, top_k=5)


@pytest.mark.parametrize("level", ["dense", "l080", "l050"])
def test_padded_batch_equals_unpadded_on_eager(level):
    """What a replay of a bucket computes: real rows, then stale rows from an earlier batch."""
    torch.manual_seed(0)
    model = load_model("vit_tiny_test", pretrained=False)
    step = InferenceStep(model, data_config=model.data_config, device=torch.device("cpu"), precision="fp32", top_k=5)
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8, generator=g)
    stale = torch.randint(0, 256, (5, 3, 224, 224), dtype=torch.uint8, generator=g)
    bucket = pad_to_bucket(3, batch_buckets(8))
    assert bucket == 4
    padded = torch.cat([x, stale[: bucket - 3]])
    with torch.inference_mode():
        probs_u, values_u, idx_u = step(x, level)
        probs_p, values_p, idx_p = step(padded, level)
    torch.testing.assert_close(probs_p[:3], probs_u, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(values_p[:3], values_u, rtol=1e-5, atol=1e-6)
    assert torch.equal(idx_p[:3], idx_u)


def test_graph_memory_counts_only_its_own_pool_on_its_device():
    # What torch.cuda.memory_snapshot() lists: segments of the default pool (0, 0), of this
    # bank's pool, of another runner's pool, and of this pool on another device.
    segments = [
        {"device": 0, "segment_pool_id": (0, 0), "total_size": 2 << 20},
        {"device": 0, "segment_pool_id": (1, 7), "total_size": 20 << 20},
        {"device": 0, "segment_pool_id": (1, 7), "total_size": 2 << 20},
        {"device": 0, "segment_pool_id": (1, 3), "total_size": 64 << 20},
        {"device": 1, "segment_pool_id": (1, 7), "total_size": 8 << 20},
    ]
    assert pool_segment_bytes(segments, (1, 7), 0) == 22 << 20
    assert pool_segment_bytes(segments, (1, 7), 1) == 8 << 20
    # A second runner in one process: what the first left cached is freed by the capture's
    # empty_cache(), so reserved memory can fall; the pool's own segments still count.
    assert pool_segment_bytes(segments, (2, 1), 0) == 0
