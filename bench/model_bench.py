"""Model-only benchmarks: images/s per level and batch, batch-1 latency, FLOP utilization.

"Model-only" is `Runner.run(level, x_uint8)` on a preprocessed host uint8 batch: upload,
normalize, the model at the level, softmax/top-k, download. That is exactly the work the
server's worker does per batch, so end-to-end figures divide by these.
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass
from functools import partial

import torch
from tqdm import tqdm

from bench.environment import describe
from bench.timing import Timing, time_calls
from models import load_model
from models.device import resolve_device
from models.op_count import count_level_ops
from service.device.runner import EagerRunner, Runner, resolve_precision

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class ModelBenchConfig:
    """What to measure.

    Args:
        model: timm model name (or vit_tiny_test).
        pretrained: load pretrained weights (speed does not depend on them; False is fine).
        device: "auto", "cpu" or "cuda".
        precision: "auto", "fp32", "bf16" or "fp16".
        batch_sizes: batch sizes for images/s.
        levels: level names, or () for all of the model's levels.
        cuda_graphs: also measure the CUDA-graph runner (CUDA only; skipped on CPU, noted).
        max_graph_batch: largest captured bucket; larger batches replay nothing (eager).
        min_time_s: time each cell at least this long (and at least min_calls calls).
        min_calls: calls per cell at least.
        max_calls: calls per cell at most.
        matmul_n: side of the square matmul that measures the peak (0: 8192 on CUDA, 1024 on CPU).
        rounds: passes over the whole grid; each cell's samples are pooled over the passes.
        compile: also measure the compiled step (SAIT_COMPILE): a "compiled" mode, and on CUDA
            with graphs a "graphs-compiled" mode (graphs captured of the compiled programs).
    """

    model: str = "deit_tiny_patch16_224"
    pretrained: bool = False
    device: str = "auto"
    precision: str = "auto"
    batch_sizes: tuple[int, ...] = (1, 8, 32, 64, 128, 256)
    levels: tuple[str, ...] = ()
    cuda_graphs: bool = True
    max_graph_batch: int = 128
    min_time_s: float = 1.0
    min_calls: int = 3
    max_calls: int = 200
    matmul_n: int = 0
    rounds: int = 1
    compile: bool = False


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, *, n: int, min_time_s: float) -> float:
    """Best sustained TFLOP/s of an n x n x n matmul in `dtype` (2 n^3 FLOPs per product)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    repeats = 10 if device.type == "cuda" else 2  # amortize the per-call sync on fast devices

    def products():
        for _ in range(repeats):
            torch.mm(a, b)

    t = time_calls(products, device=device, warmup=2, min_calls=3, max_calls=50, min_time_s=min_time_s)
    return 2 * n**3 * repeats / min(t.samples_s) / 1e12


def _runners(
    model, cfg: ModelBenchConfig, device: torch.device, levels: tuple[str, ...]
) -> tuple[dict[str, Runner], list[str]]:
    notes = []
    # Only the measured levels are warmed up and captured (all of the model's were before: 8
    # levels x 3 buckets = 24 graphs where the test asked for 2 x 3).
    kw = dict(device=str(device), precision=cfg.precision, max_batch_size=max(cfg.batch_sizes), top_k=5, levels=levels)
    runners: dict[str, Runner] = {"eager": EagerRunner(model, **kw)}
    # Compiled: only the measured batch sizes (and 1, for latency) get a program; compiling
    # every power of two up to the largest batch would take most of a GPU check's time.
    compiled = dict(compile=True, compile_buckets=tuple(sorted({1, *cfg.batch_sizes})))
    if cfg.compile:
        runners["compiled"] = EagerRunner(model, **compiled, **kw)
    if cfg.cuda_graphs and device.type == "cuda":
        from service.device.cuda_graphs import CudaGraphRunner

        runners["graphs"] = CudaGraphRunner(model, max_graph_batch=cfg.max_graph_batch, **kw)
        if cfg.compile:
            runners["graphs-compiled"] = CudaGraphRunner(model, max_graph_batch=cfg.max_graph_batch, **compiled, **kw)
        big = [b for b in cfg.batch_sizes if b > cfg.max_graph_batch]
        if big:
            notes.append(f"graphs mode runs batches {big} eager (above the largest bucket {cfg.max_graph_batch})")
    elif cfg.cuda_graphs:
        notes.append("CUDA graphs skipped: device is CPU (graphs need CUDA)")
    for name, r in runners.items():
        r.warmup()
        if r.compile:
            notes.append(
                f"{name}: {len(r.compile_buckets) * len(r.levels)} programs compiled in {r.compile_seconds:.1f} s"
            )
    return runners, notes


def run_model_bench(cfg: ModelBenchConfig) -> dict:
    """Measure (a) images/s, (b) batch-1 latency, (c) FLOP utilization; return a JSON-able dict."""
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    model = load_model(cfg.model, pretrained=cfg.pretrained)
    levels = cfg.levels or tuple(model.levels)
    for name in levels:
        model.level(name)  # unknown names fail before any timing
    n = cfg.matmul_n or (8192 if device.type == "cuda" else 1024)
    peak = {
        p: matmul_peak_tflops(device, _DTYPES[p], n=n, min_time_s=cfg.min_time_s)
        for p in dict.fromkeys(("bf16", precision))
    }
    # Operators per forward: counted once on the CPU model before it moves (exact, not timed).
    ops = {name: count_level_ops(model, name).ops for name in levels}
    runners, notes = _runners(model, cfg, device, tuple(levels))
    x = torch.randint(0, 256, (max(cfg.batch_sizes), *model.data_config.input_size), dtype=torch.uint8)
    timing = dict(
        min_calls=min(cfg.min_calls, cfg.max_calls), max_calls=cfg.max_calls, min_time_s=cfg.min_time_s, device=device
    )

    # Every cell is timed in `rounds` separate passes over the grid and the samples pooled: a
    # burst of other work on a shared machine then skews one pass of many cells, not one cell.
    tput_cells = [(m, lv, b) for m in runners for lv in levels for b in cfg.batch_sizes]
    lat_cells = [(m, lv) for m in runners for lv in levels]
    tput_samples: dict[tuple, list[float]] = {c: [] for c in tput_cells}
    lat_samples: dict[tuple, list[float]] = {c: [] for c in lat_cells}
    per_round = dict(timing, min_time_s=cfg.min_time_s / cfg.rounds)
    for r in range(cfg.rounds):
        for mode, level, batch in tqdm(
            tput_cells, desc=f"{cfg.model} images/s, pass {r + 1}/{cfg.rounds}", unit="cell"
        ):
            run = partial(runners[mode].run, level, x[:batch])
            tput_samples[(mode, level, batch)] += time_calls(run, **per_round).samples_s
        for mode, level in tqdm(lat_cells, desc=f"{cfg.model} batch-1 latency, pass {r + 1}/{cfg.rounds}", unit="cell"):
            lat_samples[(mode, level)] += time_calls(
                partial(runners[mode].run, level, x[:1]),
                warmup=3,
                **dict(per_round, min_calls=min(max(cfg.min_calls, 10), cfg.max_calls)),
            ).samples_s
    throughput = []
    for (mode, level, batch), samples in tput_samples.items():
        t = Timing(tuple(samples))
        lv = model.level(level)
        ips = batch / t.median_s
        tflops = 2 * lv.gflops * 1e9 * ips / 1e12  # level.gflops counts multiply-accumulates
        throughput.append(
            {
                "mode": mode,
                "level": level,
                "batch": batch,
                "images_per_s": ips,
                "median_ms": t.median_s * 1e3,
                "calls": len(t.samples_s),
                "gflops": lv.gflops,
                "achieved_tflops": tflops,
                "mfu_bf16_peak": tflops / peak["bf16"],
                f"mfu_{precision}_peak": tflops / peak[precision],
            }
        )
    latency = []
    for (mode, level), samples in lat_samples.items():
        t = Timing(tuple(samples))
        latency.append(
            {
                "mode": mode,
                "level": level,
                "p50_ms": t.median_s * 1e3,
                "p90_ms": t.percentile_s(90) * 1e3,
                "calls": len(t.samples_s),
            }
        )
    graphs = runners.get("graphs")
    result = {
        "suite": "model",
        "environment": describe(device),
        "settings": {**asdict(cfg), "levels": list(levels), "precision": precision, "matmul_n": n},
        "levels": {name: {**model.level(name).as_dict(), "ops": ops[name]} for name in levels},
        "matmul_peak_tflops": peak,
        "cuda_graphs": None
        if graphs is None
        else {
            "capture_seconds": graphs.capture_seconds,
            "graph_memory_bytes": graphs.graph_memory_bytes,
            "graphs": len(graphs.bank.graphs),
            "buckets": list(graphs.plan.buckets),
        },
        "throughput": throughput,
        "latency": latency,
        "notes": notes,
    }
    del runners, graphs, model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result
