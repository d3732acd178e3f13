"""The optional compiled path (SAIT_COMPILE): `torch.compile` of the runner's step.

One compiled program per (level, batch bucket): shapes are static (`dynamic=False`), the level
name is a constant the compiler specializes on, and a batch is padded to its bucket so that no
request ever meets a new shape after warm-up (a compile takes seconds to a minute).

CUDA graphs stay the runner's own (service.device.cuda_graphs) on top of the compiled step,
rather than the compiler's "reduce-overhead" graphs: one capture/replay mechanism for both
paths (the same static buffers, padding rule, shared pool and graph-memory metric), every graph
captured at warm-up instead of recorded lazily on the first calls after it, and no second
input copy into the compiler's own static buffers. The compiled step is warmed (compiled) on
the side stream before each capture, as eager kernels are.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

log = logging.getLogger(__name__)


def compile_step(step: nn.Module, *, programs: int) -> nn.Module:
    """`torch.compile(step, dynamic=False)`, with room in the compiler's cache for `programs`.

    Dynamo keeps one entry per (level, input shape) of the step's code and by default gives up
    (falling back to eager, with a warning) after 8; a server holds levels x buckets of them.
    """
    config = torch._dynamo.config
    limit = programs + 8
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < limit:
            setattr(config, name, limit)
    if getattr(config, "accumulated_recompile_limit", limit) < limit:
        config.accumulated_recompile_limit = limit
    return torch.compile(step, dynamic=False)


class CompileLog:
    """Counts and times the programs compiled at warm-up, one log line each (compiles are slow)."""

    def __init__(self, total: int):
        self.total = total
        self.done = 0
        self.seconds = 0.0

    def run(self, fn, level: str, batch: int):
        start = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - start
        self.done += 1
        self.seconds += elapsed
        log.info("compiled level=%s batch=%d in %.1f s (%d/%d)", level, batch, elapsed, self.done, self.total)
        return out
