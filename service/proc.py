"""Small helpers for the processes of a multi-process server (Linux; no-ops where unsupported)."""

from __future__ import annotations

import contextlib
import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def set_process_name(name: str) -> None:
    """The name `ps`, `top` and /proc/<pid>/comm show (15 characters at most)."""
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as f:
        f.write(name[:15])


def set_thread_name(name: str) -> None:
    """The calling thread's name in /proc (so per-thread CPU can be told apart: the inference
    worker, and the intra-op threads torch starts from it, which inherit the name)."""
    import threading

    with contextlib.suppress(OSError), open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
        f.write(name[:15])


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have the kernel send `sig` to this process when its parent dies (a SIGKILLed supervisor
    must not leave API processes serving 503 forever)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
