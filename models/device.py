"""Where a run computes: a device setting ("auto", "cpu", "cuda", "cuda:1") -> torch.device.

One function for the server, training and evaluation, so that "auto" and the error for a
missing GPU mean the same everywhere.
"""

from __future__ import annotations

import torch


class DeviceUnavailable(RuntimeError):
    """A CUDA device was asked for, but torch sees none."""


def resolve_device(device: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; "cuda" without CUDA is a clear error.

    Raises:
        DeviceUnavailable (a RuntimeError): a cuda device asked for, and torch sees no CUDA.
        ValueError: anything but auto, cpu and cuda (with an optional index such as cuda:1).
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:  # torch's own message lists every device type it knows
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; use auto, cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(f"device {device!r} requested but CUDA is not available (torch sees no CUDA device)")
    return dev
