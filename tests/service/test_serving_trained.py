"""The shared trained weights served with their own level card: the figures in every response are the
trained card's (found in models/cards/ by the weights' sha256), not the pretrained model's."""

from __future__ import annotations

import base64

import httpx
import pytest
from svc_helpers import running_server

from models.card import LevelCard
from models.fingerprint import file_sha256

pytestmark = pytest.mark.assets

DEIT = "deit_tiny_patch16_224"
TRAINED = ("trained", "deit_tiny_sait_h200_535steps.safetensors")
PHOTO = ("imagenet-samples", "n01443537_goldfish.JPEG")


@pytest.fixture(scope="module")
def trained(assets_dir):
    path = assets_dir.joinpath(*TRAINED)
    if not path.is_file():
        pytest.skip(f"shared assets absent: {path}")
    return path


@pytest.fixture(scope="module")
def cards(trained):
    found = LevelCard.for_weights(DEIT, file_sha256(trained))
    assert found is not None, "the trained weights' card is not in models/cards/"
    return found[0], LevelCard.for_model(DEIT)


@pytest.fixture(scope="module")
def server(trained, cards):
    with running_server(
        model=DEIT, weights=str(trained), max_batch_size=2, levels="dense,l060,l040", default_budget_ms=60_000
    ) as s:
        yield s


def test_the_trained_card_differs_from_the_pretrained_one(cards):
    card, pretrained = cards
    assert card.weights_sha256 != pretrained.weights_sha256
    assert card.entry("l040").top1 != pretrained.entry("l040").top1


@pytest.mark.parametrize("level", ["dense", "l060", "l040"])
def test_v1_reports_the_trained_cards_figures(server, cards, assets_dir, level):
    card, _ = cards
    r = httpx.post(
        f"{server.url}/v1/classify",
        content=assets_dir.joinpath(*PHOTO).read_bytes(),
        params={"density": level},
        headers={"Content-Type": "image/jpeg"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["level"] == level
    assert doc["level_info"]["top1"] == card.entry(level).top1
    assert doc["level_info"]["agreement"] == card.entry(level).agreement


def test_v2_reports_the_trained_cards_figures_and_min_accuracy_uses_them(server, cards, assets_dir):
    card, _ = cards
    floor = card.entry("l060").top1 / 100  # the fastest served level that reaches it
    expected = min(
        (e for e in card.levels if e.name in ("dense", "l060", "l040") and e.top1 / 100 >= floor),
        key=lambda e: e.gflops,
    )
    body = {
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(assets_dir.joinpath(*PHOTO).read_bytes()).decode()],
            }
        ],
        "parameters": {"min_accuracy": floor},
    }
    doc = httpx.post(f"{server.url}/v2/models/{DEIT}/infer", json=body, timeout=120).json()
    params = doc["parameters"]
    assert params["level"] == expected.name
    assert params["top1"] == expected.top1 and params["agreement"] == expected.agreement
    assert server.engine.card.weights_sha256 == card.weights_sha256
