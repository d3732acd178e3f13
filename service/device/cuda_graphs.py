"""CUDA-graph execution of the runner's step, one graph per (level, batch bucket).

Two objects with one job each (as in vLLM):
- `GraphPlan` decides *which* graph serves a batch: pure, CPU-tested (with
  service.device.buckets' `pad_to_bucket` and `batch_buckets`, and `GraphKey`);
- `GraphBank` only captures and replays: static device input, pinned host staging, static
  outputs, one shared memory pool.

The captured region is the whole `InferenceStep`: uint8 input -> normalize -> model at the
level -> softmax/top-k. A batch of n is padded to the next bucket b >= n: rows n..b-1 of the
static input keep whatever the previous batch left there; they are computed and discarded,
which is safe because a sample's result does not depend on the other samples in its batch
(docs/architecture.md, invariant 3; the GPU tests check padded == unpadded).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from service.device.buckets import batch_buckets, pad_to_bucket
from service.device.runner import InferenceStep, Runner

log = logging.getLogger(__name__)

# Beyond this a graph's memory grows faster than launch overhead shrinks; larger batches run eager.
MAX_GRAPH_BATCH = 128


@dataclass(frozen=True, order=True)
class GraphKey:
    """Identifies one captured graph."""

    level: str
    batch: int


class GraphPlan:
    """Which graphs exist, in which order they are captured, and which one serves a batch.

    Args:
        levels: level names, each captured at every bucket.
        buckets: batch buckets (see `batch_buckets`).
    """

    def __init__(self, *, levels: tuple[str, ...], buckets: tuple[int, ...]):
        if not levels or not buckets:
            raise ValueError("a graph plan needs at least one level and one bucket")
        self.levels = tuple(levels)
        self.buckets = tuple(sorted(set(buckets)))

    @property
    def keys(self) -> tuple[GraphKey, ...]:
        return tuple(GraphKey(level, b) for level in self.levels for b in self.buckets)

    def capture_order(self) -> tuple[GraphKey, ...]:
        """Largest batch first: smaller graphs then fit in the memory the largest freed to the
        shared pool, so the pool's size is about that of the largest graph per level."""
        return tuple(sorted(self.keys, key=lambda k: (-k.batch, self.levels.index(k.level))))

    def select(self, level: str, n: int) -> GraphKey | None:
        """The graph for a batch of n at level, or None when n is above every bucket."""
        if level not in self.levels:
            raise KeyError(f"no graphs for level {level!r}; captured: {', '.join(self.levels)}")
        b = pad_to_bucket(n, self.buckets)
        return None if b is None else GraphKey(level, b)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    static_input: torch.Tensor  # uint8 [b,3,H,W] on the device
    staging: torch.Tensor  # pinned uint8 [b,3,H,W] on the host
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class GraphBank:
    """Captures `step` for every key of a plan and replays them.

    Args:
        step: the InferenceStep to capture (already on the CUDA device).
        input_size: (3, H, W) of one image.
        warmup_iters: eager runs on a side stream before each capture (cuBLAS/cuDNN pick
            kernels and allocate workspaces outside the graph).
    """

    def __init__(self, step: InferenceStep, *, input_size: tuple[int, int, int], warmup_iters: int = 2, call=None):
        self.step = step
        self.call = call or step  # what is captured: the step, or its compiled program (SAIT_COMPILE)
        self.input_size = tuple(input_size)
        self.warmup_iters = warmup_iters
        self.graphs: dict[GraphKey, _Captured] = {}
        self.pool = None
        self.capture_seconds = 0.0
        self.memory_bytes = 0

    def capture_all(self, keys: tuple[GraphKey, ...]) -> None:
        device = self.step.device
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        self.pool = torch.cuda.graph_pool_handle()
        # One static input per bucket, shared by the levels: the levels of a bucket differ
        # only in the program, never in the input shape.
        inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        with torch.inference_mode():
            for key in keys:
                if key.batch not in inputs:
                    shape = (key.batch, *self.input_size)
                    inputs[key.batch] = (
                        torch.zeros(shape, dtype=torch.uint8, device=device),
                        torch.zeros(shape, dtype=torch.uint8).pin_memory(),
                    )
                static_input, staging = inputs[key.batch]
                self.graphs[key] = self._capture(key, static_input, staging)
        torch.cuda.synchronize(device)
        self.capture_seconds = time.perf_counter() - start
        # The graphs' memory is their private pool's segments plus the static inputs. Not the
        # growth of reserved memory: every capture starts with empty_cache() (torch.cuda.graph),
        # which also frees what an earlier runner in this process left cached, so reserved
        # memory can shrink while graphs are captured (it read 0 for the second runner).
        pool_bytes = pool_segment_bytes(torch.cuda.memory_snapshot(), self.pool, device_index(device))
        self.memory_bytes = pool_bytes + sum(t.numel() * t.element_size() for t, _ in inputs.values())

    def _capture(self, key: GraphKey, static_input: torch.Tensor, staging: torch.Tensor) -> _Captured:
        side = torch.cuda.Stream(device=static_input.device)
        side.wait_stream(torch.cuda.current_stream(static_input.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup_iters):
                self.call(static_input, key.level)
        torch.cuda.current_stream(static_input.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = self.call(static_input, key.level)
        return _Captured(graph=graph, static_input=static_input, staging=staging, outputs=outputs)

    def replay(self, key: GraphKey, x_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Copy x (host, n <= key.batch rows) in, replay, return views of the first n outputs.

        The views alias the graph's static outputs: copy them (the runner's .cpu()) before the
        next replay of a graph of the same bucket.
        """
        c = self.graphs[key]
        n = x_uint8.shape[0]
        if x_uint8.is_cuda:
            c.static_input[:n].copy_(x_uint8)
        else:
            # Pageable -> pinned is a host memcpy; pinned -> device is then a true async DMA.
            # The previous call's .cpu() synchronized, so the staging buffer is free to reuse.
            c.staging[:n].copy_(x_uint8)
            c.static_input[:n].copy_(c.staging[:n], non_blocking=True)
        c.graph.replay()
        probs, values, indices = c.outputs
        return probs[:n], values[:n], indices[:n]


def device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def pool_segment_bytes(segments: list[dict], pool, device: int) -> int:
    """Bytes of the allocator segments (`torch.cuda.memory_snapshot()`) owned by one graph pool.

    Args:
        segments: the snapshot's segment dicts (keys `segment_pool_id`, `total_size`, `device`).
        pool: the pool handle of `torch.cuda.graph_pool_handle()` (a pair of ints).
        device: CUDA device index whose segments count.
    """
    pool_id = tuple(pool)
    return sum(
        int(seg["total_size"])
        for seg in segments
        if tuple(seg.get("segment_pool_id", ())) == pool_id and seg.get("device", device) == device
    )


class CudaGraphRunner(Runner):
    """The Runner with every (level, bucket) captured at warm-up; eager above the largest bucket.

    Args: as `Runner`, plus
        max_graph_batch: largest bucket captured (default 128).
        graph_buckets: capture exactly these buckets instead (a tool that forms only full
            batches needs one); None = `batch_buckets(max_batch_size, cap=max_graph_batch)`.
    """

    uses_cuda_graphs = True

    def __init__(
        self, model, *, max_graph_batch: int = MAX_GRAPH_BATCH, graph_buckets: tuple[int, ...] | None = None, **kwargs
    ):
        super().__init__(model, **kwargs)
        if self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {self.device}")
        buckets = graph_buckets or batch_buckets(self.max_batch_size, cap=max_graph_batch)
        self.plan = GraphPlan(levels=self.levels, buckets=buckets)
        self.bank = GraphBank(self.step, input_size=self.input_size, call=self.step_fn)

    def _warmup(self) -> None:
        self._compile_all()  # compiled programs first (one per bucket up to max_batch_size), then graphs of them
        keys = self.plan.capture_order()
        log.info(
            "capturing %d CUDA graphs (levels=%s buckets=%s)", len(keys), ",".join(self.plan.levels), self.plan.buckets
        )
        self.bank.capture_all(keys)
        self.capture_seconds = self.bank.capture_seconds
        self.graph_memory_bytes = self.bank.memory_bytes
        super()._warmup()  # one replay per level at batch 1: the first replay uploads the graph

    def _run_device(self, level: str, x_uint8: torch.Tensor):
        key = self.plan.select(level, x_uint8.shape[0])
        if key is None or key not in self.bank.graphs:
            return self._eager(level, x_uint8)
        return self.bank.replay(key, x_uint8)
