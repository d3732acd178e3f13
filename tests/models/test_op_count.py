"""The operator count: exact and repeatable, views apart, one number per level."""

from __future__ import annotations

import torch

from models import load_model
from models.op_count import count_all_levels, count_forward_ops


def test_views_are_counted_apart_from_operators_that_compute():
    x = torch.randn(4, 6)
    c = count_forward_ops(lambda t: (t.view(6, 4).t() + 1).sum(), x)
    assert (c.ops, c.views) == (2, 2)  # add, sum; view, t
    assert c.by_op == {"add": 1, "sum": 1}


def test_level_counts_are_deterministic_and_sparse_levels_count_their_reductions():
    torch.manual_seed(0)
    model = load_model("vit_tiny_test", pretrained=False).eval()
    first, second = count_all_levels(model), count_all_levels(model)
    assert {k: v.as_dict() for k, v in first.items()} == {k: v.as_dict() for k, v in second.items()}
    dense = first["dense"]
    # timm's block: two norms, four matmuls (qkv, proj, fc1, fc2), one fused attention, GELU, two adds.
    depth = model.shape.depth
    assert dense.by_op["native_layer_norm"] == 2 * depth + 1 and dense.by_op["gelu"] == depth
    assert sum(v for k, v in dense.by_op.items() if "scaled_dot_product" in k) == depth
    for name, count in first.items():
        if name != "dense":
            assert count.ops > dense.ops, name  # every reduction point adds operators
