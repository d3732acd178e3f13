"""Batch-size buckets: the batch sizes the server profiles, captures and reports.

One list for three uses, so that they line up: the latency model is profiled at these sizes,
CUDA graphs are captured at them (a batch is padded to the next one), and the batch-size
histogram's buckets are these sizes.
"""

from __future__ import annotations


def batch_buckets(max_batch_size: int, *, cap: int | None = None) -> tuple[int, ...]:
    """Powers of two 1, 2, 4, ... below the top, plus the top: min(max_batch_size, cap).

    A top that is not a power of two (say 48) is a bucket of its own, so a full batch never
    pays padding to 64.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    top = max_batch_size if cap is None else min(max_batch_size, cap)
    buckets = []
    b = 1
    while b < top:
        buckets.append(b)
        b *= 2
    buckets.append(top)
    return tuple(buckets)


def pad_to_bucket(n: int, buckets: tuple[int, ...]) -> int | None:
    """The smallest bucket >= n, or None when n is above the largest."""
    if n < 1:
        raise ValueError(f"batch size must be >= 1, got {n}")
    for b in sorted(buckets):
        if b >= n:
            return b
    return None
