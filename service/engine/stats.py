"""Cumulative per-model statistics in the shape of Triton's statistics extension.

GET /v2/models/{m}/stats answers {"model_stats": [{name, version, last_inference,
inference_count, execution_count, inference_stats{success, fail, queue, compute_input,
compute_infer, compute_output}, batch_stats[{batch_size, compute_*}]}]}, every duration as
{"count", "ns"}. Here compute_input (host stacking) and compute_output are folded into
compute_infer, which is what the runner times.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict


def _duration() -> dict:
    return {"count": 0, "ns": 0}


class ModelStats:
    """Thread-safe counters; the worker adds batches, the front end adds request outcomes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last_inference_ms = 0
        self.inference_count = 0  # images inferred
        self.execution_count = 0  # batches run
        self.success = _duration()
        self.fail = _duration()
        self.queue = _duration()
        self.compute_infer = _duration()
        self.batches: dict[int, dict] = defaultdict(_duration)

    def add_batch(self, *, size: int, compute_s: float, queue_s: list[float]) -> None:
        with self._lock:
            ns = int(compute_s * 1e9)
            self.execution_count += 1
            self.inference_count += size
            self.last_inference_ms = int(time.time() * 1e3)
            self.compute_infer["count"] += size
            self.compute_infer["ns"] += ns * size
            b = self.batches[size]
            b["count"] += 1
            b["ns"] += ns
            for q in queue_s:
                self.queue["count"] += 1
                self.queue["ns"] += int(q * 1e9)

    def add_request(self, *, ok: bool, duration_s: float) -> None:
        with self._lock:
            d = self.success if ok else self.fail
            d["count"] += 1
            d["ns"] += int(duration_s * 1e9)

    def as_triton(self, *, name: str, version: str = "1") -> dict:
        with self._lock:
            zero = _duration()
            return {
                "name": name,
                "version": version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": dict(self.success),
                    "fail": dict(self.fail),
                    "queue": dict(self.queue),
                    "compute_input": dict(zero),
                    "compute_infer": dict(self.compute_infer),
                    "compute_output": dict(zero),
                    "cache_hit": dict(zero),
                    "cache_miss": dict(zero),
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": {"count": d["count"], "ns": 0},
                        "compute_infer": dict(d),
                        "compute_output": {"count": d["count"], "ns": 0},
                    }
                    for size, d in sorted(self.batches.items())
                ],
            }
