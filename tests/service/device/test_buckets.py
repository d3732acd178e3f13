"""Batch buckets: the sizes the server profiles, captures and reports."""

from __future__ import annotations

import pytest

from service.device.buckets import batch_buckets, pad_to_bucket
from service.device.cuda_graphs import MAX_GRAPH_BATCH


def test_batch_buckets_are_powers_of_two_up_to_max():
    assert batch_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert batch_buckets(1) == (1,)
    assert batch_buckets(8) == (1, 2, 4, 8)
    assert batch_buckets(12) == (1, 2, 4, 8, 12)
    assert batch_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    assert batch_buckets(512) == (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    assert batch_buckets(512, cap=MAX_GRAPH_BATCH) == (1, 2, 4, 8, 16, 32, 64, 128)
    assert batch_buckets(512, cap=16) == (1, 2, 4, 8, 16)
    with pytest.raises(ValueError):
        batch_buckets(0)


@pytest.mark.parametrize(
    "n, expected",
    [(1, 1), (2, 2), (3, 4), (5, 8), (17, 32), (32, 32), (33, None), (100, None)],
)
def test_pad_to_bucket(n, expected):
    assert pad_to_bucket(n, (1, 2, 4, 8, 16, 32)) == expected


def test_pad_to_bucket_rejects_empty_batches_and_ignores_bucket_order():
    with pytest.raises(ValueError):
        pad_to_bucket(0, (1, 2))
    assert pad_to_bucket(3, (8, 1, 4)) == 4
