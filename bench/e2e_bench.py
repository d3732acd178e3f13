"""End to end: the highest open-loop rate the server answers within a p99 bound, against model-only.

Starts `python -m service` (SAIT_* settings) on 127.0.0.1, one server per `api_processes`
value (SAIT_API_PROCESSES) in turn. For each (level, input kind) it climbs a short ladder of
constant-rate open-loop points (bench/loadgen/ladder.py), each point sent by `procs` generator
processes (bench/loadgen/procs.py) with Poisson arrivals. The figure is the highest offered
rate at which every request was answered OK with p99 (from the scheduled send) within
`p99_bound_ms`; its ratio to model-only images/s at the server's largest batch (the model
bench of the same run, or measured here before the server starts) says what the server keeps
of the device. One 224x224 image per request, so requests/s are images/s.

Requests pin the level with the `density` dial (the controller never substitutes one) and
carry a budget of ten bounds (at least 1 s): the server computes nothing that late, so an
overloaded point leaves no backlog behind it, and the bench waits one budget after a failed
point before the next. Both kinds use KServe v2 with the binary extension: UINT8
[1,3,224,224] tensors, or the JPEG as a BYTES element (decoded by the server).

Why open loop: the closed loop it replaces (one httpx process, 128 in flight) measured its
client: 217 images/s against 7,300 model-only for deit_base on an H200
(../shared/measurements/h200-2026-12-04/e2e-deit_base-closed-loop.md).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from bench.environment import describe
from bench.loadgen.arrivals import RateProfile
from bench.loadgen.client import Target
from bench.loadgen.ladder import Point, climb, highest_passing, lowest_failing_above, point_passes
from bench.loadgen.payloads import DEFAULT_IMAGE_DIR, load_folder, synthetic
from bench.loadgen.scenario import Dials, Scenario
from bench.loadgen.server import ServerProcess, served_levels
from bench.loadgen.session import LoadRun, execute
from bench.targets import model_only_reference
from models.device import resolve_device
from models.weights import TINY_TEST_MODEL, create_timm_model

INPUT_KINDS = ("uint8", "jpeg")
# What a point keeps of its load-run summary (the JSON holds them; the table shows a few).
POINT_FIELDS = (
    "requests",
    "ok",
    "shed",
    "expired",
    "error",
    "timeout",
    "unsent",
    "throughput_rps",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "server_p99_ms",
    "mean_batch",
    "client_cpu_cores",
)


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
        api_processes: SAIT_API_PROCESSES values, one server each, in turn; () = the server's default.
        procs: generator processes per point.
        p99_bound_ms: the latency bound a point must keep (p99 from the scheduled send).
        duration_s: length of one ladder point.
        warmup_s: an unmeasured run at the first rate before each ladder (0 = none).
        start_rps: the first rate of each ladder; 0 = start_fraction x model-only images/s.
        start_fraction: see start_rps.
        step: factor between rates until a point passes below one that fails.
        resolution: stop when the first failing rate is within this factor of the best passing one.
        max_points: ladder points per (server, level, input) at most.
        max_inflight: outstanding requests at most (all generators together; also SAIT_QUEUE_LIMIT).
        min_time_s: timing per cell of the model-only measurement (when this bench makes it).
        images: payload images (folder of the shared samples; synthetic when absent).
        seed: seeds the arrivals.
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
    api_processes: tuple[str, ...] = ()
    procs: int = 2
    p99_bound_ms: float = 100.0
    duration_s: float = 5.0
    warmup_s: float = 2.0
    start_rps: float = 0.0
    start_fraction: float = 0.25
    step: float = 1.5
    resolution: float = 1.1
    max_points: int = 7
    max_inflight: int = 4096
    min_time_s: float = 1.0
    images: int = 64
    seed: int = 0

    @property
    def budget_ms(self) -> float:
        return max(1000.0, 10 * self.p99_bound_ms)


def random_weights_file(model: str, folder: Path) -> Path:
    """A .safetensors of randomly initialized weights (speed does not depend on the values)."""
    from safetensors.torch import save_file

    path = folder / f"{model}-random.safetensors"
    state = {k: v.contiguous() for k, v in create_timm_model(model, pretrained=False).state_dict().items()}
    save_file(state, str(path))
    return path


def measure_model_only(cfg: E2EBenchConfig) -> dict:
    """The model bench at the server's largest batch, for the levels measured here."""
    from bench.model_bench import ModelBenchConfig, run_model_bench

    return run_model_bench(
        ModelBenchConfig(
            model=cfg.model,
            device=cfg.device,
            precision=cfg.precision,
            batch_sizes=(cfg.max_batch_size,),
            levels=cfg.levels,
            cuda_graphs=cfg.cuda_graphs,
            max_graph_batch=max(128, cfg.max_batch_size),
            min_time_s=cfg.min_time_s,
        )
    )


def point_info(summary: dict, why: str) -> dict:
    """What the report keeps of one point's load-run summary."""
    gens = summary.get("generators") or []
    lags = [g["send_lag_p99_ms"] for g in gens if g["send_lag_p99_ms"] == g["send_lag_p99_ms"]]
    return {
        **{k: summary[k] for k in POINT_FIELDS},
        "offered_rps": summary["nominal_rps"],
        # The worst generator: a starved one sends late, and its lag is in the latencies.
        "generator_send_lag_p99_ms": max(lags, default=float("nan")),
        "why": why,
    }


def climb_one(cfg: E2EBenchConfig, url: str, level: str, kind: str, payloads: list, start_rps: float, bar) -> list:
    """The ladder of one (server, level, input kind); the points in the order run."""
    dials = Dials(name=level, density=level, latency_budget_ms=cfg.budget_ms)
    scenario = Scenario.single(dials, default_budget_ms=cfg.budget_ms)

    def load(rate_rps: float, duration_s: float) -> dict:
        run = LoadRun(
            base_url=url,
            target=Target(api="v2", kind=kind, model=cfg.model),
            profile=RateProfile.constant(rate_rps, duration_s),
            scenario=scenario,
            payloads=payloads,
            process="poisson",
            # No cap below the schedule: a capped schedule would offer less than its rate.
            max_requests=int(rate_rps * duration_s * 1.5) + 1000,
            max_inflight=cfg.max_inflight,
            timeout_s=cfg.budget_ms / 1e3 + 2.0,
            seed=cfg.seed,
            progress=False,
            procs=cfg.procs,
        )
        return execute(run)[1]

    def measure(rate_rps: float) -> Point:
        bar.set_postfix_str(f"{level} {kind} {rate_rps:,.0f}/s")
        summary = load(rate_rps, cfg.duration_s)
        passed, why = point_passes(summary, p99_bound_ms=cfg.p99_bound_ms)
        if not passed:
            time.sleep(cfg.budget_ms / 1e3)  # what the server still holds expires unserved
        bar.update(1)
        return Point(rate_rps, passed, point_info(summary, why))

    if cfg.warmup_s > 0:
        load(start_rps, cfg.warmup_s)
    return climb(measure, start_rps=start_rps, step=cfg.step, resolution=cfg.resolution, max_points=cfg.max_points)


def ladder_row(points: list[Point], model_only: dict | None) -> dict:
    """The figure of one ladder: the highest passing rate, what bounded it, the ratio."""
    best = highest_passing(points)
    best_rps = best.rate_rps if best else 0.0
    above = lowest_failing_above(points, best_rps)
    mo_ips = model_only["images_per_s"] if model_only else float("nan")
    return {
        "highest_rps": best_rps,
        "at_highest": best.info if best else None,
        "first_too_high_rps": above.rate_rps if above else None,
        "first_too_high_why": above.info["why"] if above else None,
        "model_only_images_per_s": mo_ips,
        "model_only_batch": model_only["batch"] if model_only else None,
        "ratio_to_model_only": best_rps / mo_ips if model_only else float("nan"),
        "points": [{"rate_rps": p.rate_rps, "passed": p.passed, **p.info} for p in points],
    }


def run_e2e_bench(cfg: E2EBenchConfig, model_only: dict | None = None) -> dict:
    """Run the ladders; a JSON-able result.

    Args:
        model_only: a `bench model` result of the same run; None measures it here first.
    """
    device = resolve_device(cfg.device)
    source = "the model bench of this run"
    if model_only is None:
        model_only = measure_model_only(cfg)  # before the server starts: the device is ours alone
        source = f"measured by this bench at batch {cfg.max_batch_size} before the server started"
    reference = model_only_reference(model_only, cfg.max_batch_size)
    settings = {
        "MODEL": cfg.model,
        "DEVICE": device.type,
        "PRECISION": cfg.precision,
        "CUDA_GRAPHS": str(cfg.cuda_graphs).lower(),
        "MAX_BATCH_SIZE": cfg.max_batch_size,
        "MAX_QUEUE_DELAY_MS": cfg.max_queue_delay_ms,
        "QUEUE_LIMIT": cfg.max_inflight,
        "POLICY": "adaptive",
        "LEVELS": served_levels(*cfg.levels),
        "LOG_LEVEL": "warning",
    }
    kind_payloads = {
        kind: load_folder(DEFAULT_IMAGE_DIR, kind=kind, limit=cfg.images)
        if DEFAULT_IMAGE_DIR.is_dir()
        else synthetic(count=cfg.images, kind=kind)
        for kind in cfg.inputs
    }
    servers = cfg.api_processes or ("default",)
    combos = [(lv, k) for lv in cfg.levels for k in cfg.inputs]
    rows, logs, seen = [], {}, {}
    bar = tqdm(total=len(servers) * len(combos) * cfg.max_points, desc="e2e ladder points (at most)", unit="point")
    with tempfile.TemporaryDirectory(prefix="sait-bench-") as tmp:
        if not cfg.pretrained and cfg.model != TINY_TEST_MODEL:
            settings["WEIGHTS"] = str(random_weights_file(cfg.model, Path(tmp)))
        for api in servers:
            mine = settings if api == "default" else {**settings, "API_PROCESSES": api}
            with ServerProcess(settings=mine, ready_timeout_s=900) as server:
                for level, kind in combos:
                    ref = reference.get(level)
                    start = cfg.start_rps or (cfg.start_fraction * ref["images_per_s"] if ref else 10.0)
                    points = climb_one(cfg, server.url, level, kind, kind_payloads[kind], start, bar)
                    rows.append({"api_processes": api, "level": level, "input": kind, **ladder_row(points, ref)})
                # The server's processes by name after the run (API processes start one by one).
                seen[api] = sorted(server.processes())
                logs[api] = server.log_tail(800)
    bar.close()
    return {
        "suite": "e2e",
        "environment": describe(device),
        "settings": {
            **asdict(cfg),
            "budget_ms": cfg.budget_ms,
            "server": {f"SAIT_{k}": str(v) for k, v in settings.items() if k != "WEIGHTS"},
            "api": "KServe v2 binary extension, loopback 127.0.0.1",
            "payload_source": str(DEFAULT_IMAGE_DIR) if DEFAULT_IMAGE_DIR.is_dir() else "synthetic noise",
            "model_only_source": source,
        },
        "model_only": {lv: {k: r[k] for k in ("mode", "batch", "images_per_s")} for lv, r in reference.items()},
        "rows": rows,
        "server_processes": seen,
        "server_log_tail": logs,
    }
