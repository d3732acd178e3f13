"""Prometheus metrics: exactly the names and labels of docs/contract.md.

Each app gets its own registry (tests run several servers in one process). Requests are
observed once, when their response is decided; batches once, by the worker.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from service.device.buckets import batch_buckets

log = logging.getLogger(__name__)
# The *_created series double the exposition and no dashboard or rule here reads them.
disable_created_metrics()

NO_LEVEL = "none"
OUTCOMES = ("ok", "shed", "expired", "bad_request", "client_disconnect", "error")
APIS = ("v1", "v2")
_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)


class Metrics:
    """The service's metric families in one registry.

    Args:
        registry: where to register (a new one by default).
        levels: served level names (pre-created label values, so dashboards see zeros).
        max_batch_size: top bucket of the batch-size histogram.
    """

    def __init__(
        self, *, registry: CollectorRegistry | None = None, levels: tuple[str, ...] = (), max_batch_size: int = 32
    ):
        self.registry = r = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "sait_requests_total",
            "Requests answered, by API, level and outcome.",
            ["api", "level", "outcome"],
            registry=r,
        )
        self.request_duration = Histogram(
            "sait_request_duration_seconds",
            "End-to-end time from request arrival to response, seconds.",
            ["api", "level"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_duration = Histogram(
            "sait_queue_duration_seconds",
            "Time an image waited in its level queue before its batch started, seconds.",
            ["level"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.compute_duration = Histogram(
            "sait_compute_duration_seconds",
            "Compute time of one batch on the device, seconds.",
            ["level"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "sait_batch_size",
            "Images per batch run by the worker.",
            ["level"],
            buckets=[float(b) for b in batch_buckets(max_batch_size)],
            registry=r,
        )
        self.deadline = Counter(
            "sait_deadline_total", "Served requests that met or missed their latency budget.", ["result"], registry=r
        )
        self.queue_depth = Gauge("sait_queue_depth", "Images waiting per level queue.", ["level"], registry=r)
        self.level_chosen = Counter(
            "sait_level_chosen_total",
            "Levels chosen by the controller, by what decided the choice.",
            ["level", "reason"],
            registry=r,
        )
        self.ready = Gauge("sait_ready", "1 when the server accepts inference requests, else 0.", registry=r)
        self.inflight = Gauge("sait_inflight_requests", "Inference requests being handled now.", registry=r)
        self.api_requests = Counter(
            "sait_api_requests_total",
            "Requests answered per HTTP front-end process (0 when one process serves).",
            ["process"],
            registry=r,
        )
        self.shm_free_slots = Gauge(
            "sait_shm_free_slots",
            "Free shared-memory image slots per API process, as it last reported (multi-process mode).",
            ["process"],
            registry=r,
        )
        self.latency_scale = Gauge(
            "sait_latency_scale_ratio",
            "Measured / start-up profiled compute time, shared by all levels (1: as at start-up).",
            registry=r,
        )
        self.arrival_rate = Gauge(
            "sait_arrival_rate_images_per_second",
            "Images reaching the controller per second over the last 2 s, shed ones included.",
            registry=r,
        )
        self.gpu_memory = Gauge(
            "sait_gpu_memory_used_bytes", "Device memory in use (CUDA only), bytes.", ["gpu"], registry=r
        )
        self.gpu_utilization = Gauge(
            "sait_gpu_utilization_ratio",
            "Fraction of time the GPU was busy over the last sample (CUDA only).",
            ["gpu"],
            registry=r,
        )
        self.graph_capture = Gauge(
            "sait_cuda_graph_capture_seconds",
            "Time spent capturing CUDA graphs at start-up (0 when none), seconds.",
            registry=r,
        )
        self.graph_memory = Gauge(
            "sait_cuda_graph_memory_bytes", "Memory held by captured CUDA graphs (0 when none), bytes.", registry=r
        )
        for result in ("met", "missed"):
            self.deadline.labels(result=result)
        self._levels = tuple(levels)
        for level in levels:
            self.queue_depth.labels(level=level).set(0)
        self._gpu = None
        # labels() takes a lock and builds a dict per call: the children of the per-request
        # families are looked up once per label set and kept.
        self._request_children: dict[tuple, tuple] = {}
        self._children: dict[tuple, object] = {}

    # -- observations ------------------------------------------------------------------------------
    def observe_request(
        self, *, api: str, level: str | None, outcome: str, duration_s: float, process: str = "0"
    ) -> None:
        key = (api, level or NO_LEVEL, outcome, process)
        children = self._request_children.get(key)
        if children is None:
            api, level, outcome, process = key
            children = self._request_children[key] = (
                self.requests.labels(api=api, level=level, outcome=outcome),
                self.request_duration.labels(api=api, level=level),
                self.api_requests.labels(process=process),
            )
        requests, duration, per_process = children
        requests.inc()
        duration.observe(duration_s)
        per_process.inc()

    def observe_choice(self, *, level: str, reason: str) -> None:
        key = ("choice", level, reason)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.level_chosen.labels(level=level, reason=reason)
        child.inc()

    def observe_deadline(self, met: bool) -> None:
        key = ("deadline", met)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.deadline.labels(result="met" if met else "missed")
        child.inc()

    def observe_batch(self, *, level: str, size: int, compute_s: float, queue_s: list[float]) -> None:
        self.batch_size.labels(level=level).observe(size)
        self.compute_duration.labels(level=level).observe(compute_s)
        hist = self.queue_duration.labels(level=level)
        for q in queue_s:
            hist.observe(q)

    def read_queue_depth(self, depth) -> None:
        """Sample `depth()` (level -> images queued) at each scrape, not on every request:
        the queues change with every request and batch, and a scrape wants only their state now."""
        for level in self._levels:
            self.queue_depth.labels(level=level).set_function(lambda level=level: depth().get(level, 0))

    # -- exposition ----------------------------------------------------------------------------------
    def enable_gpu(self, device_index: int) -> None:
        """Sample device memory/utilization at each scrape (nvidia-ml-py, else torch.cuda)."""
        self._gpu = _GpuSampler(device_index)

    def render(self) -> tuple[bytes, str]:
        if self._gpu is not None:
            self._gpu.sample(self)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _GpuSampler:
    def __init__(self, index: int):
        self.index = index
        self.label = str(index)
        self.handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.nvml = pynvml
        except Exception as exc:  # no nvidia-ml-py, or no NVML: memory from torch only
            log.info("nvidia-ml-py unavailable (%s): GPU utilization not exported", exc)

    def sample(self, metrics: Metrics) -> None:
        try:
            if self.handle is not None:
                mem = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
                util = self.nvml.nvmlDeviceGetUtilizationRates(self.handle)
                metrics.gpu_memory.labels(gpu=self.label).set(mem.used)
                metrics.gpu_utilization.labels(gpu=self.label).set(util.gpu / 100.0)
            else:
                import torch

                free, total = torch.cuda.mem_get_info(self.index)
                metrics.gpu_memory.labels(gpu=self.label).set(total - free)
        except Exception as exc:  # a failing sample must not fail the scrape
            log.warning("GPU metrics sample failed: %s", exc)
