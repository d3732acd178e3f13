"""The compiled path (SAIT_COMPILE) on the CPU: one program per (level, bucket), equal to eager."""

from __future__ import annotations

import pytest
import torch

from models import load_model
from service.device import runner as runner_module
from service.device.runner import EagerRunner


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


class _Recorder:
    """Stands in for torch.compile: runs the step eagerly and records every input shape."""

    def __init__(self, step):
        self.step, self.calls = step, []

    def __call__(self, x, level):
        self.calls.append((level, x.shape[0]))
        return self.step(x, level)


def test_every_program_is_compiled_at_warmup_and_batches_are_padded_to_a_bucket(monkeypatch):
    recorders = []

    def fake_compile(step, *, programs):
        recorders.append((_Recorder(step), programs))
        return recorders[-1][0]

    monkeypatch.setattr(runner_module, "compile_step", fake_compile)
    torch.manual_seed(0)
    model = load_model("vit_tiny_test", pretrained=False)
    levels = ("dense", "l050")
    compiled = EagerRunner(model, device="cpu", precision="fp32", max_batch_size=4, levels=levels, compile=True)
    ((recorder, programs),) = recorders
    assert programs == 2 * 3  # levels x buckets (1, 2, 4)
    compiled.warmup()
    assert set(recorder.calls) == {(lv, b) for lv in levels for b in (1, 2, 4)}  # each compiled at warm-up
    recorder.calls.clear()
    eager = EagerRunner(model, device="cpu", precision="fp32", max_batch_size=4, levels=levels)
    x = _images(3, seed=3)
    out, ref = compiled.run("l050", x), eager.run("l050", x)
    assert recorder.calls == [("l050", 4)]  # 3 images padded to the bucket of 4: no new shape
    assert out.probs.shape[0] == 3
    torch.testing.assert_close(out.probs, ref.probs, rtol=1e-5, atol=1e-6)


def test_compiled_step_equals_eager_within_1e_4():
    torch.manual_seed(0)
    model = load_model("vit_tiny_test", pretrained=False)
    # One program (batch 1): compiling costs about 30 s per program on 2 cores; padding to the
    # buckets is the test above's.
    kw = dict(device="cpu", precision="fp32", max_batch_size=1, levels=("l050",))
    compiled = EagerRunner(model, compile=True, **kw)
    eager = EagerRunner(model, **kw)
    compiled.warmup()
    assert compiled.compile_seconds > 0
    for seed in (1, 2):
        x = _images(1, seed=seed)
        diff = (compiled.run("l050", x).probs - eager.run("l050", x).probs).abs().max().item()
        assert diff <= 1e-4, diff


@pytest.mark.parametrize("bad", ["l999"])
def test_compiled_runner_refuses_unknown_levels_like_eager(bad):
    model = load_model("vit_tiny_test", pretrained=False)
    with pytest.raises(ValueError, match="unknown level"):
        EagerRunner(model, device="cpu", precision="fp32", levels=(bad,), compile=True)
