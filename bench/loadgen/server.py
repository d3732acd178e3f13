"""Start a sait-serve server as a subprocess on loopback, wait until ready, stop it cleanly.

Used by the overload experiment, the soak test and the end-to-end test. Also reads the
server's resident memory from /proc/<pid>/status (Linux) for the soak's RSS series.

Experiments that keep several servers up and let them take turns (overload --interleave,
compare) pause the ones not being measured (SIGSTOP): an idle server is not idle, its worker
times a probe batch every few seconds (SAIT_IDLE_PROBE_S), and on a 2-core host that work
lands in the middle of the measured server's batches.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETS = REPO_ROOT.parent / "shared" / "assets"


class ServerError(RuntimeError):
    """The server did not come up (the message carries the tail of its log)."""


def served_levels(*pinned: str) -> str:
    """SAIT_LEVELS for a bench's server: dense and the levels its requests pin, served whatever
    SAIT_LEVELS=auto would offer on this device (and no level warmed that no request asks for)."""
    return ",".join(dict.fromkeys(("dense", *pinned)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status_field(pid: int, name: str) -> str | None:
    """The first word of a field of /proc/<pid>/status (Linux), or None without it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split()[1]
    return None


def thread_cpu_s(pid: int) -> dict[int, tuple[float, float]]:
    """CPU seconds (user, system) of each live thread of a process, by thread id (Linux:
    /proc/<pid>/task/<tid>/stat, fields 14 and 15 in clock ticks). The main thread's id is
    the pid. A thread that ends between the listing and the read is left out."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) is in parentheses and may hold spaces: split after it.
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(task.name)] = (int(fields[11]) / tick, int(fields[12]) / tick)
    return out


# Where a server's CPU goes, by thread (bench.request_cost): the HTTP event loops, the rest of
# the front end (decode pool, ...), the engine's event loop and its other threads, the model
# (the inference worker and torch's intra-op threads it starts, named "sait-worker") and, in a
# multi-process server, the supervisor.
ROLES = ("api_loop", "api_other", "engine_loop", "engine_other", "model", "supervisor")
WORKER_THREAD = "sait-worker"


def _comm(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def server_threads(root_pid: int) -> dict[tuple[int, int], tuple[str, float, float]]:
    """Every thread of a server and its child processes: (pid, tid) -> (role, CPU s, of which kernel s).

    One process serving (no children named sait-*): its main thread is the HTTP event loop and
    also runs the controller. A multi-process server: API processes "sait-api-N", the engine
    "sait-engine", the root is the supervisor.
    """
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        if int(text[text.rindex(")") + 2 :].split()[1]) == root_pid and comm.startswith("sait-"):
            children[int(stat.parent.name)] = comm
    out = {}
    for pid, kind in [(root_pid, "supervisor" if children else "single"), *children.items()]:
        for tid, (user, system) in thread_cpu_s(pid).items() if Path(f"/proc/{pid}").exists() else ():
            name = _comm(Path(f"/proc/{pid}/task/{tid}/comm"))
            if kind == "supervisor":
                role = "supervisor"
            elif name == WORKER_THREAD:
                role = "model"
            elif kind == "sait-engine":
                role = "engine_loop" if tid == pid else "engine_other"
            else:  # an API process, or the single process
                role = "api_loop" if tid == pid else "api_other"
            out[(pid, tid)] = (role, user + system, system)
    return out


def cpu_by_role(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds per role between two `server_threads` readings, and `api_loop_sys` (the
    event loops' kernel time). A thread born in between counts from zero; one that ended in
    between is lost, so those figures are floors."""
    spent = dict.fromkeys((*ROLES, "api_loop_sys"), 0.0)
    for key, (role, cpu_s, sys_s) in after.items():
        _, cpu0, sys0 = before.get(key, (role, 0.0, 0.0))
        spent[role] += cpu_s - cpu0
        if role == "api_loop":
            spent["api_loop_sys"] += sys_s - sys0
    return spent


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status (VmRSS is in kB)."""
    kb = _status_field(pid, "VmRSS")
    if kb is None:
        raise ServerError(f"no VmRSS for pid {pid}")
    return int(kb) * 1024


class ServerProcess:
    """`python -m service` with SAIT_* settings, bound to 127.0.0.1 on a free port.

    Args:
        settings: SAIT_* values without the prefix, e.g. {"POLICY": "fixed:dense"}.
        port: port to bind (a free one by default).
        python: interpreter to run (this one by default).
        ready_timeout_s: how long start-up (model load, warm-up, profiling) may take.
        log_path: where the server's stdout/stderr go (a temp file by default).
        root: the checkout to run the server from (this one by default; another worktree
            compares code versions side by side).
    """

    def __init__(
        self,
        *,
        settings: dict[str, str] | None = None,
        port: int | None = None,
        python: str | None = None,
        ready_timeout_s: float = 300.0,
        log_path: Path | None = None,
        root: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = dict(settings or {})
        self.python = python or sys.executable
        self.ready_timeout_s = ready_timeout_s
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="sait-server-", suffix=".log")[1])
        self.root = Path(root) if root is not None else REPO_ROOT
        self.proc: subprocess.Popen | None = None
        self.paused = False

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServerError("server not started")
        return self.proc.pid

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Offline pretrained weights from the shared hub cache, unless the caller set them.
        env.setdefault("HF_HOME", str(ASSETS / "hf-cache"))
        # The server may run from another checkout (root): a cache path relative to where the
        # caller stands must still point at the same cache there.
        env["HF_HOME"] = os.path.abspath(env["HF_HOME"])
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.update({f"SAIT_{k.upper()}": str(v) for k, v in self.settings.items()})
        env.update({"SAIT_HOST": "127.0.0.1", "SAIT_PORT": str(self.port)})
        return env

    def start(self) -> ServerProcess:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [self.python, "-m", "service"],
            cwd=self.root,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if self._wait_ready(self.ready_timeout_s, poll_s=0.25):
            return self
        self.stop()
        raise ServerError(f"server not ready after {self.ready_timeout_s:.0f} s: {self.log_tail()}")

    def _wait_ready(self, timeout_s: float, *, poll_s: float) -> bool:
        """Poll /v2/health/ready until 200 (True) or timeout_s (False); raise if the server exits."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise ServerError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
                try:
                    if client.get("/v2/health/ready").status_code == 200:
                        return True
                except httpx.HTTPError:
                    pass
                time.sleep(poll_s)
        return False

    def processes(self) -> dict[str, int]:
        """The server's processes by name (Linux): "sait-engine", "sait-api-0", ... and "main"."""
        found = {"main": self.pid}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            comm = text[text.index("(") + 1 : text.rindex(")")]
            ppid = int(text[text.rindex(")") + 2 :].split()[1])
            if ppid == self.pid and comm.startswith("sait-"):
                found[comm] = int(stat.parent.name)
        return found

    def pause(self) -> None:
        """Freeze the server (SIGSTOP to its process group): it takes no CPU until resume()."""
        if self.proc is None or self.proc.poll() is not None:
            raise ServerError("server not running")
        os.killpg(self.proc.pid, signal.SIGSTOP)
        self.paused = True
        # The signal is delivered asynchronously: wait (briefly) until the process is stopped,
        # so that the next measurement does not share the CPU with its last milliseconds.
        deadline = time.monotonic() + 2.0
        while Path("/proc").is_dir() and time.monotonic() < deadline:
            if _status_field(self.proc.pid, "State") == "T":
                break
            time.sleep(0.005)

    def resume(self, timeout_s: float = 10.0) -> None:
        """Thaw a paused server and wait until it answers its readiness probe again."""
        if self.proc is None or self.proc.poll() is not None:
            raise ServerError("server not running")
        os.killpg(self.proc.pid, signal.SIGCONT)
        self.paused = False
        if not self._wait_ready(timeout_s, poll_s=0.05):
            raise ServerError(f"server not ready {timeout_s:.0f} s after resuming: {self.log_tail()}")

    @contextmanager
    def turn(self):
        """Resume for the duration of the block, pause again after it (for servers taking turns)."""
        self.resume()
        try:
            yield self
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self.pause()

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL if it does not exit in timeout_s."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        if self.paused:
            os.killpg(self.proc.pid, signal.SIGCONT)  # a stopped process would not see SIGTERM
            self.paused = False
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
