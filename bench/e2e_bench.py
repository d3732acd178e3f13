"""End-to-end server throughput and latency per level, loopback, UINT8 and JPEG inputs.

Starts `python -m service` (SAIT_* settings) as a subprocess on 127.0.0.1, then for each
(level, input kind) runs a closed loop: `concurrency` clients, each sending its next request
as soon as the previous answer arrives, for `duration_s`. Requests pin the level with the
`density` dial and carry a generous budget, so the controller never substitutes a level.
Both kinds use KServe v2 with the binary extension: UINT8 [1,3,224,224] tensors, or the JPEG
as a BYTES element (decoded by the server).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from tqdm import tqdm

from bench.environment import describe
from bench.loadgen.client import Result, Target, discover_v2_io, send
from bench.loadgen.payloads import DEFAULT_IMAGE_DIR, load_folder, synthetic
from bench.loadgen.scenario import Dials
from bench.loadgen.server import ServerProcess
from models.device import resolve_device
from models.weights import TINY_TEST_MODEL, create_timm_model

INPUT_KINDS = ("uint8", "jpeg")


@dataclass(frozen=True)
class E2EBenchConfig:
    """What to run.

    Args:
        model: timm model name (or vit_tiny_test).
        pretrained: False writes random weights to a temporary .safetensors (speed only).
        device: SAIT_DEVICE.
        precision: SAIT_PRECISION.
        cuda_graphs: SAIT_CUDA_GRAPHS.
        max_batch_size: SAIT_MAX_BATCH_SIZE.
        max_queue_delay_ms: SAIT_MAX_QUEUE_DELAY_MS.
        levels: level names to measure (the server serves all of them).
        inputs: "uint8" and/or "jpeg".
        concurrency: closed-loop clients (in flight at once).
        duration_s: measuring time per (level, input), after a short warm-up.
        warmup_s: unmeasured time per (level, input).
        images: payload images (folder of the shared samples; synthetic when absent).
    """

    model: str = "deit_tiny_patch16_224"
    pretrained: bool = False
    device: str = "auto"
    precision: str = "auto"
    cuda_graphs: bool = True
    max_batch_size: int = 32
    max_queue_delay_ms: float = 2.0
    levels: tuple[str, ...] = ("dense", "l070", "l050")
    inputs: tuple[str, ...] = INPUT_KINDS
    concurrency: int = 64
    duration_s: float = 10.0
    warmup_s: float = 2.0
    images: int = 64


async def closed_loop(
    url: str,
    target: Target,
    dials: Dials,
    payloads: list,
    *,
    concurrency: int,
    duration_s: float,
    budget_ms: float,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[list[Result], float]:
    """Each of `concurrency` clients sends back to back until the time is up; (results, elapsed_s).

    `transport` replaces the network (tests pass an httpx.MockTransport).
    """
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, timeout=max(30.0, budget_ms / 1e3), limits=limits, transport=transport
    ) as client:
        input_name, output_name = await discover_v2_io(client, target.model, target.kind)
        target = Target(api="v2", kind=target.kind, model=target.model, input_name=input_name, output_name=output_name)
        start = time.perf_counter()
        end = start + duration_s
        results: list[Result] = []

        async def one_client(worker: int) -> None:
            i = worker
            while time.perf_counter() < end:
                r = Result(index=i, cls=dials.name, scheduled_s=time.perf_counter() - start, budget_ms=budget_ms)
                results.append(await send(client, target, dials, payloads[i % len(payloads)], r, start_s=start))
                i += concurrency

        await asyncio.gather(*(one_client(w) for w in range(concurrency)))
        return results, time.perf_counter() - start


def summarize(results: list[Result], elapsed_s: float) -> dict:
    ok = [r for r in results if r.outcome == "ok"]
    lat = sorted(r.latency_ms for r in ok)
    q = lambda p: lat[min(len(lat) - 1, round(p / 100 * (len(lat) - 1)))] if lat else float("nan")
    return {
        "requests": len(results),
        "ok": len(ok),
        "outcomes": dict(Counter(r.outcome for r in results)),
        "images_per_s": len(ok) / elapsed_s,
        "p50_ms": q(50),
        "p99_ms": q(99),
        "mean_ms": statistics.fmean(lat) if lat else float("nan"),
        "server_compute_ms_p50": _median([r.compute_ms for r in ok]),
        "levels_answered": dict(Counter(r.level for r in ok)),
        "errors": sorted({r.error for r in results if r.error})[:3],
    }


def _median(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def random_weights_file(model: str, folder: Path) -> Path:
    """A .safetensors of randomly initialized weights (speed does not depend on the values)."""
    from safetensors.torch import save_file

    path = folder / f"{model}-random.safetensors"
    state = {k: v.contiguous() for k, v in create_timm_model(model, pretrained=False).state_dict().items()}
    save_file(state, str(path))
    return path


def run_e2e_bench(cfg: E2EBenchConfig) -> dict:
    device = resolve_device(cfg.device)
    settings = {
        "MODEL": cfg.model,
        "DEVICE": device.type,
        "PRECISION": cfg.precision,
        "CUDA_GRAPHS": str(cfg.cuda_graphs).lower(),
        "MAX_BATCH_SIZE": cfg.max_batch_size,
        "MAX_QUEUE_DELAY_MS": cfg.max_queue_delay_ms,
        "QUEUE_LIMIT": max(512, 4 * cfg.concurrency),
        "POLICY": "adaptive",
        "LOG_LEVEL": "warning",
    }
    kind_payloads = {}
    for kind in cfg.inputs:
        kind_payloads[kind] = (
            load_folder(DEFAULT_IMAGE_DIR, kind=kind, limit=cfg.images)
            if DEFAULT_IMAGE_DIR.is_dir()
            else synthetic(count=cfg.images, kind=kind)
        )
    budget_ms = 60_000.0
    rows = []
    with tempfile.TemporaryDirectory(prefix="sait-bench-") as tmp:
        if not cfg.pretrained and cfg.model != TINY_TEST_MODEL:
            settings["WEIGHTS"] = str(random_weights_file(cfg.model, Path(tmp)))
        with ServerProcess(settings=settings, ready_timeout_s=900) as server:
            for level, kind in tqdm([(lv, k) for lv in cfg.levels for k in cfg.inputs], desc="e2e", unit="run"):
                dials = Dials(name=level, density=level, latency_budget_ms=budget_ms)
                target = Target(api="v2", kind=kind, model=cfg.model)
                run = lambda s, target=target, dials=dials, kind=kind: asyncio.run(
                    closed_loop(
                        server.url,
                        target,
                        dials,
                        kind_payloads[kind],
                        concurrency=cfg.concurrency,
                        duration_s=s,
                        budget_ms=budget_ms,
                    )
                )
                run(cfg.warmup_s)
                results, elapsed = run(cfg.duration_s)
                rows.append(
                    {
                        "level": level,
                        "input": kind,
                        "concurrency": cfg.concurrency,
                        "duration_s": elapsed,
                        **summarize(results, elapsed),
                    }
                )
            server_log = server.log_tail(800)
    return {
        "suite": "e2e",
        "environment": describe(device),
        "settings": {
            **asdict(cfg),
            "server": {f"SAIT_{k}": str(v) for k, v in settings.items() if k != "WEIGHTS"},
            "api": "KServe v2 binary extension, loopback 127.0.0.1",
            "payload_source": str(DEFAULT_IMAGE_DIR) if DEFAULT_IMAGE_DIR.is_dir() else "synthetic noise",
        },
        "rows": rows,
        "server_log_tail": server_log,
    }
