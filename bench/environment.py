"""What a benchmark ran on: device, CPU model, torch/CUDA versions (every report names them)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

from models.machine import cpu_model


def git_commit(root: Path | None = None) -> str | None:
    """The checkout's commit (with "+dirty" when files differ): which levels and code ran.

    Args:
        root: the checkout (this one by default; another worktree for a before/after run).
    """
    root = root or Path(__file__).resolve().parents[1]  # the checkout holding bench/
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "models", "service"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def describe(device: torch.device) -> dict:
    """A JSON-able description of the machine and software for a report header."""
    env = {
        "device": str(device),
        "device_name": cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        # Other work on the machine skews CPU figures; the report says how busy it was.
        "load_average_1m_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["gpu_capability"] = f"{props.major}.{props.minor}"
    return env


def headline(env: dict) -> str:
    """One line for a markdown report."""
    if env["device"].startswith("cuda"):
        dev = f"GPU {env['device_name']} ({env.get('gpu_memory_gib', '?')} GiB), host CPU {env['cpu']}"
    else:
        dev = f"CPU {env['device_name']} ({env['cpu_threads']} torch threads, {env['cpu_count']} cores visible)"
    cuda = f", CUDA {env['cuda']}" if env.get("cuda") else ""
    load = env.get("load_average_1m_at_start")
    busy = f"; load average {load} at start" if load is not None else ""
    commit = f"; commit {env['git_commit']}" if env.get("git_commit") else ""
    return f"{dev}; torch {env['torch']}{cuda}; Python {env['python']}{busy}{commit}"
