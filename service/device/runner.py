"""The runner: the one object that owns the device and runs a batch at a density level.

One interface, two implementations:
- `EagerRunner` (CPU and GPU): uint8 host batch -> device -> normalize -> model@level ->
  softmax/top-k, every call launched op by op;
- `CudaGraphRunner` (service.device.cuda_graphs): the same computation captured once per
  (level, batch bucket) at warm-up and replayed from static buffers.

`service.device.factory.create_runner` picks one from the settings. Only the single inference worker thread calls
`run` (docs/architecture.md, invariant 4), so runners keep no locks.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from models.device import resolve_device
from models.levels import DENSE
from models.preprocess import DataConfig
from service.device.buckets import batch_buckets, pad_to_bucket
from service.device.compiled import CompileLog, compile_step

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class RunOutput:
    """The result of one batch, on the host.

    Args:
        probs: float32 [N, num_classes] softmax probabilities.
        topk_values: float32 [N, k], the k largest probabilities, descending.
        topk_indices: int64 [N, k], their class indices.
    """

    probs: torch.Tensor
    topk_values: torch.Tensor
    topk_indices: torch.Tensor


def resolve_precision(precision: str, device: torch.device) -> str:
    """ "auto" -> bf16 on CUDA (tensor cores, fp32 range), fp32 on CPU (no bf16 speed-up there)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use auto, {', '.join(PRECISIONS)}")
    return precision


def autocast_context(device: torch.device, precision: str):
    """Mixed precision for matmuls/attention; norms and softmax stay fp32 under autocast.

    cache_enabled=False: autocast's weight-cast cache must not outlive a CUDA-graph capture
    (the cached casts would be freed while the graph still points at them).
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPE[precision], cache_enabled=False)


class InferenceStep(nn.Module):
    """uint8 [N,3,H,W] on the device -> (probs, topk_values, topk_indices), all on the device.

    The whole region a CUDA graph captures: no host sync, no data-dependent shapes. Mean and
    std live on the device once, so normalizing launches no host->device copies.

    Args:
        model: a SparseViT (or any module called as model(x, level) -> logits).
        data_config: mean/std used by `models.preprocess.normalize_uint8`.
        device: where mean/std live.
        precision: "fp32", "bf16" or "fp16".
        top_k: how many classes to return (clamped to the number of classes).
        fp32_head: under bf16/fp16, run the classifier head in fp32 (see `logits`).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        data_config: DataConfig,
        device: torch.device,
        precision: str,
        top_k: int,
        fp32_head: bool = True,
    ):
        super().__init__()
        self.model = model
        self.device = device
        self.precision = precision
        self.top_k = top_k
        self.fp32_head = fp32_head
        # Same arithmetic as normalize_uint8: (x/255 - mean) / std, in float32.
        self.register_buffer(
            "mean", torch.tensor(data_config.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(data_config.std, dtype=torch.float32, device=device).view(1, -1, 1, 1))

    def forward(self, x_uint8: torch.Tensor, level: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = (x_uint8.to(torch.float32) / 255.0 - self.mean) / self.std
        probs = self.logits(x, level).float().softmax(dim=-1)
        k = min(self.top_k, probs.shape[-1])
        values, indices = probs.topk(k, dim=-1)
        return probs, values, indices

    def logits(self, x: torch.Tensor, level: str) -> torch.Tensor:
        """The model at `level`; under reduced precision the blocks run in autocast and the head
        in fp32: the head decides between near-tied classes, and in fp32 it costs one small
        matmul (docs/precision.md measures the agreement with fp32 with and without it)."""
        if self.precision == "fp32" or not self.fp32_head or not hasattr(self.model, "forward_head"):
            with autocast_context(self.device, self.precision):
                return self.model(x, level)
        with autocast_context(self.device, self.precision):
            if level == DENSE:
                # timm's forward is forward_head(forward_features(x)): the same two halves.
                features = self.model.timm_model.forward_features(x)
            else:
                features = self.model.forward_features(x, self.model.level(level))
        return self.model.forward_head(features.float())


class Runner:
    """Runs batches at a level on one device. Subclasses implement `_run_device`.

    Args:
        model: a SparseViT in eval mode (moved to `device` here).
        device: "cpu", "cuda" or "auto".
        precision: "auto", "fp32", "bf16" or "fp16".
        max_batch_size: the largest batch the service forms (warm-up and graph buckets use it).
        top_k: classes returned per image.
        fp32_head: under bf16/fp16, run the classifier head in fp32 (default; cheap, more faithful).
        levels: the levels served (SAIT_LEVELS); None = all of the model's. Only these are
            warmed up and captured.
        compile: run a `torch.compile`d step (SAIT_COMPILE): one program per (level, batch
            bucket), all compiled at warm-up; a batch is padded to its bucket (service.device.compiled).
        compile_buckets: the buckets compiled (a tool measuring a few batch sizes needs only
            those); None = `batch_buckets(max_batch_size)`.
    """

    uses_cuda_graphs = False

    def __init__(
        self,
        model: nn.Module,
        *,
        device: str = "auto",
        precision: str = "auto",
        max_batch_size: int = 32,
        top_k: int = 5,
        fp32_head: bool = True,
        levels: tuple[str, ...] | None = None,
        compile: bool = False,
        compile_buckets: tuple[int, ...] | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.max_batch_size = max_batch_size
        self.top_k = top_k
        self.model = model.eval().to(self.device)
        known = tuple(getattr(model, "levels", {DENSE: None}))
        unknown = [name for name in (levels or ()) if name not in known]
        if unknown:
            raise ValueError(f"unknown level(s) {', '.join(unknown)}; known: {', '.join(known)}")
        self.levels: tuple[str, ...] = tuple(levels) if levels else known
        self.input_size: tuple[int, int, int] = tuple(model.data_config.input_size)
        self.step = InferenceStep(
            self.model,
            data_config=model.data_config,
            device=self.device,
            precision=self.precision,
            top_k=top_k,
            fp32_head=fp32_head,
        )
        self.compile = compile
        self.compile_buckets: tuple[int, ...] = (
            tuple(sorted(compile_buckets or batch_buckets(max_batch_size))) if compile else ()
        )
        self.step_fn = (
            compile_step(self.step, programs=len(self.levels) * len(self.compile_buckets)) if compile else self.step
        )
        self.compile_seconds = 0.0
        self._compiled = False
        # Exported as sait_cuda_graph_capture_seconds / sait_cuda_graph_memory_bytes; zero
        # for runners that capture nothing. warmup_seconds is the whole warm-up.
        self.capture_seconds = 0.0
        self.graph_memory_bytes = 0
        self.warmup_seconds = 0.0
        self.ready = False

    # -- public API -----------------------------------------------------------------------
    def warmup(self) -> None:
        """Run every level once (CUDA kernels selected, allocator primed) before readiness."""
        start = time.perf_counter()
        self._warmup()
        self._sync()
        self.warmup_seconds = time.perf_counter() - start
        self.ready = True
        log.info(
            "runner warm: device=%s precision=%s graphs=%s compiled=%s levels=%d warmup_s=%.2f compile_s=%.2f "
            "capture_s=%.2f graph_memory_mib=%.1f",
            self.device,
            self.precision,
            self.uses_cuda_graphs,
            self.compile,
            len(self.levels),
            self.warmup_seconds,
            self.compile_seconds,
            self.capture_seconds,
            self.graph_memory_bytes / 2**20,
        )

    def run(self, level: str, x_uint8: torch.Tensor) -> RunOutput:
        """uint8 [N,3,H,W] on the host -> RunOutput on the host."""
        self._check(level, x_uint8)
        with torch.inference_mode():
            probs, values, indices = self._run_device(level, x_uint8)
        # One device->host transfer per tensor; .cpu() synchronizes, so results are final.
        return RunOutput(probs=probs.cpu(), topk_values=values.cpu(), topk_indices=indices.cpu())

    # -- for subclasses ---------------------------------------------------------------------
    def _run_device(self, level: str, x_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _warmup(self) -> None:
        self._compile_all()
        x = torch.zeros((1, *self.input_size), dtype=torch.uint8)
        for level in self.levels:
            self.run(level, x)

    def _compile_all(self) -> None:
        """Compile every (level, bucket) program now, so that no request waits for a compile."""
        if not self.compile or self._compiled:
            return
        progress = CompileLog(len(self.levels) * len(self.compile_buckets))
        log.info(
            "compiling %d programs (levels=%s buckets=%s)", progress.total, ",".join(self.levels), self.compile_buckets
        )
        for batch in sorted(self.compile_buckets, reverse=True):
            x = torch.zeros((batch, *self.input_size), dtype=torch.uint8)
            for level in self.levels:
                progress.run(lambda level=level, x=x: self.run(level, x), level, batch)
        self.compile_seconds = progress.seconds
        self._compiled = True

    def _eager(self, level: str, x_uint8: torch.Tensor):
        x = x_uint8.to(self.device, non_blocking=True)
        if not self.compile:
            return self.step(x, level)
        # Pad to the bucket so the compiled program for that shape serves (rows past n are
        # computed and dropped: a sample's result does not depend on its batch mates).
        n = x.shape[0]
        bucket = pad_to_bucket(n, self.compile_buckets) or n
        if bucket > n:
            x = torch.cat([x, x[:1].expand(bucket - n, *x.shape[1:])])
        probs, values, indices = self.step_fn(x, level)
        return probs[:n], values[:n], indices[:n]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _check(self, level: str, x_uint8: torch.Tensor) -> None:
        if level not in self.levels:
            raise KeyError(f"unknown level {level!r}; known: {', '.join(self.levels)}")
        if x_uint8.dtype != torch.uint8:
            raise TypeError(f"runner input must be uint8, got {x_uint8.dtype}")
        if x_uint8.dim() != 4 or tuple(x_uint8.shape[1:]) != self.input_size:
            raise ValueError(
                f"runner input must be [N,{','.join(map(str, self.input_size))}], got {list(x_uint8.shape)}"
            )
        if x_uint8.shape[0] < 1:
            raise ValueError("runner input is an empty batch")


class EagerRunner(Runner):
    """Launches the step op by op: CPU serving, and the GPU escape hatch (cuda_graphs=False)."""

    def _run_device(self, level: str, x_uint8: torch.Tensor):
        return self._eager(level, x_uint8)
