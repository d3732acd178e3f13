"""Weights files: the two safe formats load exactly; every bad case is one clear WeightsError."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from models import TINY_TEST_MODEL, WeightsError, load_model

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def state(tiny_model):
    # Different values from the default init, so that loading visibly changes the model.
    return {k: v.clone() + 0.01 for k, v in tiny_model.timm_model.state_dict().items()}


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_safe_formats_load_exactly(tmp_path, state, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"model": state}, path)  # wrapped checkpoints are unwrapped
    model = load_model(TINY_TEST_MODEL, weights=path)
    for k, v in model.timm_model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="not found") as exc:
        load_model(TINY_TEST_MODEL, weights=tmp_path / "nope.safetensors")
    one_line(exc)


def test_unsupported_suffix(tmp_path, state):
    path = tmp_path / "w.bin"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="unsupported weights file type") as exc:
        load_model(TINY_TEST_MODEL, weights=path)
    one_line(exc)


class _Exploit:
    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # would create the marker file if unpickled


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    _Exploit.marker = marker
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": _Exploit()}))
    with pytest.raises(WeightsError, match="cannot read weights file") as exc:
        load_model(TINY_TEST_MODEL, weights=path)
    one_line(exc)
    assert not marker.exists()


def test_corrupt_safetensors(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(WeightsError, match="cannot read weights file") as exc:
        load_model(TINY_TEST_MODEL, weights=path)
    one_line(exc)


def test_wrong_architecture(tmp_path, state):
    bad = dict(state)
    bad["head.weight"] = torch.zeros(10, 64)
    bad["head.bias"] = torch.zeros(10)
    path = tmp_path / "w.safetensors"
    save_file(bad, str(path))
    with pytest.raises(WeightsError, match="another architecture") as exc:
        load_model(TINY_TEST_MODEL, weights=path)
    one_line(exc)


def test_missing_and_unexpected_keys(tmp_path, state):
    bad = {k: v for k, v in state.items() if k != "norm.weight"}
    bad["extra.weight"] = torch.zeros(3)
    path = tmp_path / "w.safetensors"
    save_file(bad, str(path))
    with pytest.raises(WeightsError, match="1 missing .*norm.weight.*1 unexpected .*extra.weight") as exc:
        load_model(TINY_TEST_MODEL, weights=path)
    one_line(exc)


def test_not_a_dict_of_tensors(tmp_path):
    path = tmp_path / "w.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(WeightsError, match="flat dict of tensors"):
        load_model(TINY_TEST_MODEL, weights=path)


def test_unknown_model_name():
    with pytest.raises(WeightsError, match="unknown model name") as exc:
        load_model("deit_nonexistent_patch3", weights=None)
    one_line(exc)


def test_not_a_vision_transformer(tmp_path):
    with pytest.raises(WeightsError, match="not a timm VisionTransformer"):
        load_model("resnet18", pretrained=False)
