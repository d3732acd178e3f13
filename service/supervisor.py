"""The multi-process server: one engine process, N API processes on one port, and this supervisor.

    parent (this module)  reserves the port, creates one shared-memory arena per API process,
                          starts and watches the children, orders the shutdown
    engine process        service.engine.server: the model, controller, batcher, worker, device
    API processes         service.frontend.api_process: uvicorn + the HTTP front end, each with
                          its own listening socket on the one port (SO_REUSEPORT: the kernel
                          spreads new connections over them evenly; with one shared socket an
                          event loop accepts a whole burst by itself)

Start-up: the engine loads first; a start-up error there ends everything with exit code 2 and
one line on stderr, as in one-process mode. Then the API processes start (liveness answers
while the engine warms up; readiness follows the engine).

While serving: an API process that dies is started again on the same arena (the others keep
serving); if the engine dies, the API processes answer 503 with readiness false at once, and
after ENGINE_LOST_GRACE_S this process stops them and exits 1, so that Kubernetes restarts the
pod. SIGTERM (or Ctrl-C): every API process drains (readiness 503 at once, in-flight requests
finish; what is still unanswered when SAIT_DRAIN_TIMEOUT_S is up gets 503), then the engine
stops (at the latest at the drain's end: nothing waits for its queue then); exit 0 within the
drain's time and about two seconds.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
from multiprocessing.connection import wait
from pathlib import Path

from service.engine.client import shm_slots_default
from service.engine.server import engine_main
from service.engine.wire import SlotArena
from service.frontend.api_process import api_main, reuseport_socket
from service.settings import Settings

log = logging.getLogger("service.supervisor")

# After the engine died: how long the API processes keep answering 503 (probes see not-ready,
# waiting clients get an answer) before they are stopped and this process exits 1.
ENGINE_LOST_GRACE_S = 2.0
# After the drain's time: how long a process may take to exit before it is killed.
EXIT_GRACE_S = 1.8
# An API process that keeps dying is a bug, not bad luck: more restarts than this within
# RESTART_WINDOW_S end the server.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
POLL_S = 0.2


def resolve_api_processes(settings: Settings) -> int:
    """SAIT_API_PROCESSES as a number: `auto` is 0 on a CPU (the model's cores are the bound there,
    and more processes would take CPU from it), and on CUDA half the usable cores less one, 1 to
    8 (the GPU needs the HTTP work of many cores; the rest is left to the engine's event loop,
    its worker and the kernel's network stack)."""
    if settings.api_processes != "auto":
        return int(settings.api_processes)
    if settings.device == "cpu":
        return 0
    import torch

    if settings.device == "auto" and not torch.cuda.is_available():
        return 0
    return min(8, max(1, usable_cores() // 2 - 1))


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container's CPU limit does not change the affinity, which shows the whole node)."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


class Supervisor:
    """Starts, watches and stops the engine and API processes.

    Args:
        settings: validated settings.
        api_processes: how many API processes (>= 1).
    """

    def __init__(self, settings: Settings, api_processes: int):
        if api_processes < 1:
            raise ValueError("the supervisor runs at least one API process")
        self.settings = settings
        self.n = api_processes
        self.ctx = mp.get_context("spawn")
        self.values = settings.model_dump()
        self.stopping = False
        self.forced = False
        self.engine = None
        self.control = None  # the duplex pipe to the engine: "loaded"/"error" in, "stop" out
        self.port = settings.port
        self.apis: list = [None] * api_processes
        self.arenas: list[SlotArena] = []
        self.restarts: list[list[float]] = [[] for _ in range(api_processes)]

    # -- signals ---------------------------------------------------------------------------------------
    def _on_signal(self, sig: int, frame) -> None:
        if self.stopping and sig == signal.SIGINT:
            self.forced = True
        self.stopping = True

    # -- the run -----------------------------------------------------------------------------------------
    def run(self) -> int:
        tmp = tempfile.mkdtemp(prefix="sait-serve-")
        socket_path = os.path.join(tmp, "engine.sock")
        try:
            try:
                sock = reuseport_socket(self.settings.host, self.settings.port, listening=False)
            except OSError as exc:
                print(f"sait-serve: cannot listen on {self.settings.host}:{self.settings.port}: {exc}", file=sys.stderr)
                return 2
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            image_bytes = self._start_engine(socket_path)
            if image_bytes is None:
                return 2
            slots = self.settings.shm_slots or shm_slots_default(
                self.settings.queue_limit, self.n, self.settings.max_batch_size
            )
            self.arenas = [
                SlotArena.create(f"sait-{os.getpid()}-{i}", slots=slots, slot_bytes=image_bytes) for i in range(self.n)
            ]
            log.info(
                "%d API processes on %s:%d, %d shared-memory slots each (%.0f MiB)",
                self.n,
                self.settings.host,
                sock.getsockname()[1],
                slots,
                slots * image_bytes / 2**20,
            )
            self.port = sock.getsockname()[1]
            for i in range(self.n):
                self._start_api(i, socket_path)
            return self._watch(socket_path)
        finally:
            self._kill_all()
            for arena in self.arenas:
                arena.close()
                try:
                    arena.unlink()
                except FileNotFoundError:
                    pass
            shutil.rmtree(tmp, ignore_errors=True)

    def _start_engine(self, socket_path: str) -> int | None:
        """Start the engine and wait until it has loaded: its image size, or None after a start-up error."""
        self.control, theirs = self.ctx.Pipe(duplex=True)
        self.engine = self.ctx.Process(
            target=engine_main, args=(self.values, socket_path, theirs), name="sait-engine", daemon=False
        )
        self.engine.start()
        theirs.close()
        while True:
            if self.forced:
                return None
            ready = wait([self.control, self.engine.sentinel], timeout=POLL_S)
            if self.control in ready:
                try:
                    kind, detail = self.control.recv()
                except EOFError:
                    kind, detail = "error", None
                if kind == "loaded":
                    return int(detail["image_bytes"])
                print(f"sait-serve: {detail or 'the engine process ended during start-up'}", file=sys.stderr)
                self.engine.join(10)
                return None
            if self.engine.sentinel in ready and not self.control.poll():
                print(
                    f"sait-serve: the engine process ended during start-up (exit code {self.engine.exitcode})",
                    file=sys.stderr,
                )
                return None

    def _start_api(self, i: int, socket_path: str) -> None:
        arena = self.arenas[i]
        proc = self.ctx.Process(
            target=api_main,
            args=(self.values, self.port, socket_path, arena.name, arena.slots, arena.slot_bytes, i),
            name=f"sait-api-{i}",
            daemon=False,
        )
        proc.start()
        self.apis[i] = proc

    def _watch(self, socket_path: str) -> int:
        engine_lost_at = None
        shutdown_deadline = None
        engine_stopping = False
        while True:
            sentinels = [self.engine.sentinel] + [p.sentinel for p in self.apis if p is not None and p.is_alive()]
            wait(sentinels, timeout=POLL_S)
            now = time.monotonic()
            if self.forced:
                log.warning("second interrupt: stopping every process now")
                return 1
            engine_alive = self.engine.is_alive()
            if not engine_alive and not engine_stopping:
                if engine_lost_at is None:
                    engine_lost_at = now
                    log.error("the engine process exited (code %s): stopping the server", self.engine.exitcode)
                if now - engine_lost_at >= ENGINE_LOST_GRACE_S:
                    self._stop_apis(deadline_s=5.0)
                    return 1
                continue
            if self.stopping and shutdown_deadline is None:
                log.info("draining: %d API processes first, then the engine", self.n)
                # The API processes answer or give up on every request by the drain's end
                # (service.frontend.server) and exit about a second later.
                drain_end = now + self.settings.drain_timeout_s
                shutdown_deadline = drain_end + EXIT_GRACE_S
                for p in self.apis:
                    if p is not None and p.is_alive():
                        p.terminate()
            if shutdown_deadline is not None:
                apis_left = [p for p in self.apis if p is not None and p.is_alive()]
                if apis_left and now > shutdown_deadline:
                    log.warning("%d API processes still draining at the deadline: killed", len(apis_left))
                    for p in apis_left:
                        p.kill()
                    apis_left = []
                # The engine's work is the API processes' requests: once they are gone, or the
                # drain's time is up (they answer 503 for what is left), nothing waits for it.
                if (not apis_left or now > drain_end) and not engine_stopping:
                    engine_stopping = True
                    self.control.send("stop")
                    shutdown_deadline = max(shutdown_deadline, now + EXIT_GRACE_S)
                if engine_stopping and not engine_alive and not apis_left:
                    bad = [p.exitcode for p in self.apis if p is not None and p.exitcode not in (0, -signal.SIGTERM)]
                    return 0 if self.engine.exitcode == 0 and not bad else 1
                if engine_stopping and engine_alive and now > shutdown_deadline:
                    log.warning("the engine did not stop in time: killed")
                    self.engine.kill()
                    return 1
                continue
            for i, p in enumerate(self.apis):
                if p is not None and not p.is_alive():
                    if not self._may_restart(i, now):
                        log.error("API process %d keeps dying (exit code %s): stopping the server", i, p.exitcode)
                        self.stopping = True
                        break
                    log.warning("API process %d exited (code %s): starting it again", i, p.exitcode)
                    self._start_api(i, socket_path)

    def _may_restart(self, i: int, now: float) -> bool:
        recent = [t for t in self.restarts[i] if now - t < RESTART_WINDOW_S]
        self.restarts[i] = [*recent, now]
        return len(recent) < MAX_RESTARTS

    def _stop_apis(self, deadline_s: float) -> None:
        for p in self.apis:
            if p is not None and p.is_alive():
                p.terminate()
        give_up = time.monotonic() + deadline_s
        for p in self.apis:
            if p is not None:
                p.join(max(0.0, give_up - time.monotonic()))

    def _kill_all(self) -> None:
        for p in [self.engine, *self.apis]:
            if p is not None and p.is_alive():
                p.kill()
                p.join(5)


def run(settings: Settings, api_processes: int) -> int:
    return Supervisor(settings, api_processes).run()
