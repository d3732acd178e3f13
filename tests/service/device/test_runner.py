"""Runner contract on CPU: eager runner output equals the model's own softmax at every level."""

from __future__ import annotations

import pytest
import torch

from models import load_model
from models.preprocess import normalize_uint8
from service.device.factory import create_runner
from service.device.runner import EagerRunner, RunOutput, resolve_precision


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_model("vit_tiny_test", pretrained=False)


@pytest.fixture(scope="module")
def runner(model):
    r = create_runner(model, device="cpu", precision="fp32", cuda_graphs=True, max_batch_size=4, top_k=5)
    r.warmup()
    return r


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 224, 224), dtype=torch.uint8, generator=g)


def test_create_runner_on_cpu_is_eager_even_with_graphs_requested(runner):
    assert isinstance(runner, EagerRunner)
    assert runner.precision == "fp32"
    assert runner.ready and runner.capture_seconds == 0.0 and runner.graph_memory_bytes == 0


@pytest.mark.parametrize("level", ["dense", "l090", "l070", "l050"])
def test_run_equals_model_softmax(model, runner, level):
    x = _images(3, seed=1)
    out = runner.run(level, x)
    assert isinstance(out, RunOutput)
    with torch.inference_mode():
        expected = model(normalize_uint8(x, model.data_config), level).softmax(-1)
    assert out.probs.dtype == torch.float32 and out.probs.shape == (3, 1000)
    torch.testing.assert_close(out.probs, expected, rtol=1e-5, atol=1e-6)
    assert out.topk_values.shape == (3, 5) and out.topk_indices.shape == (3, 5)
    torch.testing.assert_close(out.topk_values, out.probs.gather(1, out.topk_indices))
    assert torch.equal(out.topk_indices[:, 0], expected.argmax(-1))


def test_bad_input_is_rejected_clearly(runner):
    with pytest.raises(KeyError, match="known: dense"):
        runner.run("l999", _images(1))
    with pytest.raises(TypeError, match="uint8"):
        runner.run("dense", _images(1).float())
    with pytest.raises(ValueError, match=r"\[N,3,224,224\]"):
        runner.run("dense", torch.zeros((1, 3, 32, 32), dtype=torch.uint8))


def test_precision_auto_and_bf16_on_cpu(model):
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("int8", torch.device("cpu"))
    r = create_runner(model, device="cpu", precision="bf16", cuda_graphs=False, max_batch_size=2, top_k=3)
    out = r.run("l060", _images(2, seed=2))
    assert out.probs.dtype == torch.float32
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(2), rtol=1e-4, atol=1e-4)


def test_cuda_device_without_cuda_is_a_clear_error(model):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: this checks the message shown without it")
    with pytest.raises(RuntimeError, match="no CUDA"):
        create_runner(model, device="cuda", precision="auto", cuda_graphs=True, max_batch_size=1, top_k=1)


@pytest.mark.parametrize("level", ["dense", "l060"])
def test_reduced_precision_runs_the_head_in_fp32(model, level):
    """Under bf16 the head's matmul sees fp32 features and fp32 weights."""
    r = create_runner(model, device="cpu", precision="bf16", cuda_graphs=False, max_batch_size=2, top_k=3)
    seen = []
    handle = model.timm_model.head.register_forward_hook(lambda mod, inp, out: seen.append((inp[0].dtype, out.dtype)))
    try:
        out = r.run(level, _images(2, seed=4))
    finally:
        handle.remove()
    assert seen == [(torch.float32, torch.float32)]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        body_bf16 = model(normalize_uint8(_images(2, seed=4), model.data_config), level).float().softmax(-1)
    # Same probabilities as the all-bf16 forward, up to bf16 rounding of the head.
    torch.testing.assert_close(out.probs, body_bf16, rtol=0.05, atol=2e-3)
    # The ablation switch puts the head back under autocast.
    r16 = create_runner(
        model, device="cpu", precision="bf16", cuda_graphs=False, max_batch_size=2, top_k=3, fp32_head=False
    )
    seen.clear()
    handle = model.timm_model.head.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    try:
        r16.run(level, _images(2, seed=4))
    finally:
        handle.remove()
    assert seen == [torch.bfloat16]


def test_runner_serves_only_the_levels_it_is_given(model):
    r = create_runner(
        model, device="cpu", precision="fp32", cuda_graphs=True, max_batch_size=1, top_k=1, levels=("dense", "l050")
    )
    assert r.levels == ("dense", "l050")
    with pytest.raises(KeyError, match="known: dense, l050"):
        r.run("l070", _images(1))
    with pytest.raises(ValueError, match="unknown level"):
        create_runner(
            model,
            device="cpu",
            precision="fp32",
            cuda_graphs=False,
            max_batch_size=1,
            top_k=1,
            levels=("dense", "l999"),
        )
