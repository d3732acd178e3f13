"""Each level's measured speed on this device, at the batch sizes a server forms.

The level card keeps these per device kind (`device_kind`), and the levels a server offers
on a device are chosen from them and the accuracy (`models.card.choose_levels`): a level that
saves GFLOPs but is not faster on that device is not worth its accuracy there.

The timed region is the model at the level on a ready device batch, under the precision's
autocast, no gradients; on CUDA each (level, batch) is captured as a CUDA graph first (what
the server replays). Cells are timed in rounds that interleave the levels, and each cell's
median over all its calls is kept, so a burst of other load on a shared machine skews one
round of every level rather than one level.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch
from torch import nn
from tqdm import tqdm

from models.machine import cpu_model

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def device_kind(device: torch.device) -> str:
    """What a speed table is keyed by: "cuda:<GPU name>" or "cpu:<CPU model>"."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{cpu_model()}"


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST[precision], cache_enabled=False)


class _Call:
    """model(x, level) on a fixed input; on CUDA, a captured graph of it."""

    def __init__(self, model: nn.Module, level: str, x: torch.Tensor, precision: str, graphs: bool, pool):
        self.model, self.level, self.x, self.precision = model, level, x, precision
        self.graph = None
        if graphs:
            side = torch.cuda.Stream(device=x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # kernels chosen and workspaces allocated outside the graph
                    self._eager()
            torch.cuda.current_stream(x.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool):
                self._eager()

    def _eager(self):
        with _autocast(self.x.device, self.precision):
            return self.model(self.x, self.level)

    def __call__(self):
        if self.graph is not None:
            self.graph.replay()
        else:
            self._eager()


def measure_speed(
    model: nn.Module,
    levels: tuple[str, ...],
    *,
    device: torch.device,
    precision: str = "fp32",
    batch_sizes: tuple[int, ...] = (1, 8, 32),
    min_time_s: float = 0.5,
    rounds: int = 3,
    cuda_graphs: bool = True,
    progress: bool = True,
) -> dict[str, dict[int, float]]:
    """Images/s per level and batch size: batch / median seconds per call.

    Args:
        model: a SparseViT, already on `device` and in eval mode.
        precision: "fp32", "bf16" or "fp16" (autocast, as the server runs it).
        min_time_s: time each cell at least this long per round (and at least 3 calls).
        rounds: passes over all cells; the samples of a cell are pooled over them.
        cuda_graphs: on CUDA, time graph replays (the server's path); ignored on the CPU.
    """
    if precision not in ("fp32", *_AUTOCAST):
        raise ValueError(f"unknown precision {precision!r}; use fp32, bf16 or fp16")
    graphs = cuda_graphs and device.type == "cuda"
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    gen = torch.Generator().manual_seed(0)
    samples: dict[tuple[str, int], list[float]] = {(lv, b): [] for lv in levels for b in batch_sizes}
    with torch.inference_mode():
        pool = torch.cuda.graph_pool_handle() if graphs else None
        inputs = {b: torch.randn((b, *model.data_config.input_size), generator=gen).to(device) for b in batch_sizes}
        calls = {
            (lv, b): _Call(model, lv, inputs[b], precision, graphs, pool)
            for b in sorted(batch_sizes, reverse=True)  # largest first: smaller graphs reuse its pool
            for lv in levels
        }
        cells = [(lv, b) for b in batch_sizes for lv in levels]
        for r in range(rounds):
            for cell in tqdm(cells, desc=f"speed, round {r + 1}/{rounds}", unit="cell", disable=not progress):
                call = calls[cell]
                call()  # one untimed call: caches and clocks settle on this cell
                sync(device)
                start = time.perf_counter()
                while True:
                    t0 = time.perf_counter()
                    call()
                    sync(device)
                    samples[cell].append(time.perf_counter() - t0)
                    if time.perf_counter() - start >= min_time_s and len(samples[cell]) >= 3 * (r + 1):
                        break
    return {lv: {b: b / statistics.median(samples[(lv, b)]) for b in batch_sizes} for lv in levels}
