"""resolve_device: auto, a clear error for cuda without CUDA, nothing but cpu and cuda."""

from __future__ import annotations

import pytest
import torch

from models.device import DeviceUnavailable, resolve_device


def test_auto_picks_cuda_when_present_else_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_cpu_and_cuda_by_name(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_cuda_without_cuda_is_a_clear_runtime_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(DeviceUnavailable, match="no CUDA") as info:
            resolve_device(name)
        assert isinstance(info.value, RuntimeError) and repr(name) in str(info.value)


@pytest.mark.parametrize("name", ["mps", "meta", "gpu", "", "cpu:x"])
def test_other_devices_are_refused(name):
    with pytest.raises(ValueError, match="unsupported device.*use auto, cpu or cuda"):
        resolve_device(name)
