"""The runner the settings ask for: CUDA graphs on CUDA when enabled, else eager."""

from __future__ import annotations

import logging

from torch import nn

from models.device import resolve_device
from service.device.cuda_graphs import CudaGraphRunner
from service.device.runner import EagerRunner, Runner

log = logging.getLogger(__name__)


def create_runner(
    model: nn.Module,
    *,
    device: str = "auto",
    precision: str = "auto",
    cuda_graphs: bool = True,
    max_batch_size: int = 32,
    top_k: int = 5,
    fp32_head: bool = True,
    levels: tuple[str, ...] | None = None,
    compile: bool = False,
) -> Runner:
    """The runner the settings ask for: CUDA graphs on CUDA when enabled, else eager.

    Args:
        model: a SparseViT (from models.load_model).
        device: "auto", "cpu" or "cuda" (SAIT_DEVICE).
        precision: "auto", "fp32", "bf16" or "fp16" (SAIT_PRECISION).
        cuda_graphs: capture CUDA graphs when on CUDA (SAIT_CUDA_GRAPHS); ignored on CPU.
        max_batch_size: largest batch (SAIT_MAX_BATCH_SIZE); graph buckets go up to it.
        top_k: classes returned per image.
        fp32_head: under bf16/fp16, keep the classifier head in fp32 (ablation switch).
        levels: the served levels (SAIT_LEVELS; None = all): only these are captured.
        compile: torch.compile the step, one program per (level, bucket) (SAIT_COMPILE).
    """
    dev = resolve_device(device)
    kwargs = dict(
        device=str(dev),
        precision=precision,
        max_batch_size=max_batch_size,
        top_k=top_k,
        fp32_head=fp32_head,
        levels=levels,
        compile=compile,
    )
    if cuda_graphs and dev.type == "cuda":
        return CudaGraphRunner(model, **kwargs)
    if cuda_graphs and dev.type != "cuda":
        log.info("cuda_graphs requested but device is %s: running eager", dev)
    return EagerRunner(model, **kwargs)
