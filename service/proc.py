"""Small helpers for the processes of a multi-process server (Linux; no-ops where unsupported)."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal
import sys
from typing import NoReturn

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


def exit_now(code: int) -> NoReturn:
    """End a server process whose work is done: run the atexit handlers (logging's flush,
    multiprocessing's clean-up of named semaphores: about 20 ms), then skip the interpreter's
    teardown of its modules, which with torch and timm loaded takes 1.5-2 s on the 2-core
    development machine and frees nothing the kernel does not, while the shutdown is bound to
    SAIT_DRAIN_TIMEOUT_S + 2 s (service.frontend.server)."""
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
