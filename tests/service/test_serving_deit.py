"""The real DeiT-Tiny from ../shared/assets: a real photo classified correctly through both APIs,
with the same prediction as models.preprocess + the model (what `python -m models.evaluate` does)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from PIL import Image
from svc_helpers import running_server

from models import load_model
from models.preprocess import normalize_uint8, pil_to_uint8

pytestmark = pytest.mark.assets

DEIT = "deit_tiny_patch16_224"
PHOTO = ("imagenet-samples", "n01443537_goldfish.JPEG")
GOLDFISH = 1
# The plain weights file inside the shared hub cache: loading it by path works whatever
# HF_HOME the process imported huggingface_hub with.
WEIGHTS = (
    "hf-cache",
    "hub",
    "models--timm--deit_tiny_patch16_224.fb_in1k",
    "snapshots",
    "0000000000000000000000000000000000000000",
    "model.safetensors",
)


@pytest.fixture(scope="module")
def weights(assets_dir):
    path = assets_dir.joinpath(*WEIGHTS)
    if not path.is_file():
        pytest.skip(f"shared assets absent: {path}")
    return path


@pytest.fixture(scope="module")
def deit(weights):
    return load_model(DEIT, weights)


@pytest.fixture(scope="module")
def photo(assets_dir):
    path = assets_dir.joinpath(*PHOTO)
    if not path.is_file():
        pytest.skip(f"shared assets absent: {path}")
    return path


@pytest.fixture(scope="module")
def reference(deit, photo):
    """Probabilities from the evaluation path: pil_to_uint8 -> normalize -> dense model -> softmax."""
    crop = pil_to_uint8(Image.open(photo), deit.data_config)
    with torch.inference_mode():
        probs = deit(normalize_uint8(crop[None], deit.data_config), "dense").softmax(-1)[0]
    return crop, probs.numpy()


@pytest.fixture(scope="module")
def server(weights):
    with running_server(
        model=DEIT,
        weights=str(weights),
        max_batch_size=2,
        levels="dense,l050",
        default_budget_ms=60_000,
        max_queue_delay_ms=0,
    ) as s:
        yield s


def test_photo_through_native_api(server, photo, reference):
    _, ref = reference
    assert int(ref.argmax()) == GOLDFISH
    r = httpx.post(
        f"{server.url}/v1/classify",
        content=photo.read_bytes(),
        params={"density": "dense", "top_k": 3},
        headers={"Content-Type": "image/jpeg"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    top = r.json()["predictions"][0]
    assert top["index"] == GOLDFISH and top["label"] == "goldfish"
    assert top["probability"] == pytest.approx(float(ref[GOLDFISH]), abs=1e-4)


def test_photo_through_tritonclient_bytes_and_uint8(server, photo, reference):
    crop, ref = reference
    client = triton.InferenceServerClient(server.hostport, network_timeout=120)
    try:
        inp = triton.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([photo.read_bytes()], dtype=object))
        res = client.infer(
            DEIT,
            [inp],
            parameters={"density": "dense"},
            outputs=[triton.InferRequestedOutput("probabilities"), triton.InferRequestedOutput("top_k_indices")],
        )
        np.testing.assert_allclose(res.as_numpy("probabilities")[0], ref, atol=1e-5)
        assert res.as_numpy("top_k_indices")[0, 0] == GOLDFISH
        pixels = crop[None].numpy()
        inp = triton.InferInput("pixels", list(pixels.shape), "UINT8")
        inp.set_data_from_numpy(pixels)
        cls = client.infer(
            DEIT,
            [inp],
            parameters={"density": "dense"},
            outputs=[triton.InferRequestedOutput("probabilities", class_count=1)],
        )
        assert cls.as_numpy("probabilities")[0, 0].decode().split(":")[1:] == [str(GOLDFISH), "goldfish"]
        sparse = client.infer(DEIT, [inp], parameters={"density": 0.5})
        assert sparse.get_response()["parameters"]["level"] == "l050"
    finally:
        client.close()
