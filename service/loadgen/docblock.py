"""Writing measured results into docs: the machine's name and marker-delimited blocks."""

from __future__ import annotations

import os
from pathlib import Path
from models.machine import cpu_model




def cores() -> int:
    return len(os.sched_getaffinity(0))


def relpath(path: Path, start: Path) -> str:
    return os.path.relpath(path.resolve(), start.resolve())


def replace_block(path: Path, block: str, *, begin: str, end: str) -> None:
    """Put `block` (which starts with `begin` and ends with `end`) in place of the old one.

    Appended at the end of the file when the markers are absent, so re-running replaces it.
    """
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
