"""Writing measured results into docs: the machine's name and marker-delimited blocks."""

from __future__ import annotations

import os
from pathlib import Path

from models.machine import cpu_model, replace_block  # noqa: F401 (re-exported)


def cores() -> int:
    return len(os.sched_getaffinity(0))


def relpath(path: Path, start: Path) -> str:
    return os.path.relpath(path.resolve(), start.resolve())
