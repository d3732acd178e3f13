"""Timing: bounded in count and time."""

from __future__ import annotations

import pytest
import torch

from bench.timing import time_calls

CPU = torch.device("cpu")


def test_time_calls_is_bounded_in_count():
    calls = []
    t = time_calls(lambda: calls.append(1), device=CPU, warmup=2, min_calls=3, max_calls=5, min_time_s=60.0)
    assert len(t.samples_s) == 5 and len(calls) == 7  # max_calls wins over min_time_s
    t = time_calls(lambda: None, device=CPU, warmup=0, min_calls=4, max_calls=100, min_time_s=0.0)
    assert len(t.samples_s) == 4
    assert t.percentile_s(0) == min(t.samples_s) and t.percentile_s(100) == max(t.samples_s)
    with pytest.raises(ValueError):
        time_calls(lambda: None, device=CPU, min_calls=5, max_calls=2)
