"""The accuracy dial through a level card (SAIT_LEVEL_CARD), a level subset, and a fixed policy; which
card serves which weights (beside the file, by hash, SAIT_LEVEL_CARD, none) and the refusal of a card
made for other weights."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from safetensors.torch import save_file
from svc_helpers import TINY, png_bytes, running_server

from models.card import card_beside
from models.fingerprint import file_sha256
from service.engine.cards import CardError, load_card
from service.engine.core import Engine, StartupError
from service.settings import Settings

# Invented numbers for the random tiny model: the card only has to drive the dial's mechanics.
CARD = {
    "model": TINY,
    "levels": [
        {"name": "dense", "reducer": "none", "gflops": 0.1, "gflops_ratio": 1.0, "top1": 0.80, "agreement": 1.0},
        {"name": "l080", "reducer": "prune", "gflops": 0.08, "gflops_ratio": 0.78, "top1": 0.79, "agreement": 0.97},
        {"name": "l060", "reducer": "prune", "gflops": 0.06, "gflops_ratio": 0.59, "top1": 0.76, "agreement": 0.92},
        {"name": "l050", "reducer": "prune", "gflops": 0.05, "gflops_ratio": 0.49, "top1": 0.70, "agreement": 0.85},
    ],
}


@pytest.fixture(scope="module")
def card_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("card") / "card.json"
    path.write_text(json.dumps(CARD))
    return path


@pytest.fixture(scope="module")
def server(card_path):
    with running_server(
        level_card=str(card_path),
        levels="dense,l080,l060,l050",
        policy="fixed:0.6",
        default_budget_ms=60_000,
        max_queue_delay_ms=0,
    ) as s:
        yield s


def classify(server, **params):
    return httpx.post(
        f"{server.url}/v1/classify",
        content=png_bytes(),
        params=params,
        headers={"Content-Type": "image/png"},
        timeout=60,
    )


def test_fixed_policy_serves_requests_without_a_dial(server):
    doc = classify(server).json()
    assert (doc["level"], doc["reason"]) == ("l060", "policy")
    assert doc["level_info"]["top1"] == 0.76 and doc["level_info"]["agreement"] == 0.92


@pytest.mark.parametrize("floor,level", [(0.75, "l060"), (0.78, "l080"), (0.8, "dense"), (0.5, "l050")])
def test_min_accuracy_picks_the_fastest_level_meeting_it(server, floor, level):
    doc = classify(server, min_accuracy=floor).json()
    assert (doc["level"], doc["reason"]) == (level, "accuracy")


def test_unreachable_accuracy_and_unserved_levels_are_400(server):
    r = classify(server, min_accuracy=0.95)
    assert r.status_code == 400 and "no level reaches" in r.json()["error"]
    r = classify(server, density="l070")
    assert r.status_code == 400 and "served levels: dense, l080, l060, l050" in r.json()["error"]


def test_v2_reports_card_values_in_parameters(server):
    import base64

    body = {
        "inputs": [
            {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(png_bytes()).decode()]}
        ],
        "parameters": {"min_accuracy": 0.78},
    }
    doc = httpx.post(f"{server.url}/v2/models/{TINY}/infer", json=body, timeout=60).json()
    assert doc["parameters"]["level"] == "l080" and doc["parameters"]["top1"] == 0.79
    meta = httpx.get(f"{server.url}/v2/models/{TINY}").json()
    assert meta["parameters"]["levels"] == "dense,l080,l060,l050"


# -- which card serves which weights -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory, tiny_model):
    """The tiny model's weights as a file, so that they have a fingerprint."""
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model.timm_model.state_dict().items()}, str(path))
    return path


def write_card(path, **fields):
    path.write_text(json.dumps(CARD | fields))
    return path


def settings(**kw) -> Settings:
    return Settings(model=TINY, device="cpu", **kw)


def test_the_card_beside_the_weights_serves_them(tiny_weights):
    beside = write_card(card_beside(tiny_weights), weights_sha256=file_sha256(tiny_weights))
    try:
        card = load_card(settings(weights=str(tiny_weights)))
        assert card is not None and card.weights_sha256 == file_sha256(tiny_weights)
        assert card.entry("l060").top1 == 0.76
    finally:
        beside.unlink()


def test_a_card_is_found_by_the_hash_of_the_weights(tiny_weights, tmp_path, monkeypatch):
    monkeypatch.setattr("models.card.CARDS_DIR", tmp_path)
    write_card(tmp_path / "other.json", weights_sha256="0" * 64)
    write_card(tmp_path / "ours.json", weights_sha256=file_sha256(tiny_weights), images=7)
    (tmp_path / "broken.json").write_text("{not json")
    card = load_card(settings(weights=str(tiny_weights)))
    assert card is not None and card.source["images"] == 7


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"weights_sha256": "f" * 64}, "was measured with weights sha256 ffffffffffff"),
        ({}, "was measured without naming its weights"),
        ({"model": "deit_tiny_patch16_224"}, "is for model deit_tiny_patch16_224, not the served vit_tiny_test"),
    ],
)
def test_a_card_made_for_other_weights_stops_the_start(tiny_weights, tmp_path, fields, message):
    path = write_card(tmp_path / "card.json", **fields)
    with pytest.raises(CardError, match=message) as info:
        load_card(settings(weights=str(tiny_weights), level_card=str(path)))
    assert "\n" not in str(info.value) and "SAIT_LEVEL_CARD=none" in str(info.value)
    with pytest.raises(StartupError, match="level card"):
        Engine.load(settings(weights=str(tiny_weights), level_card=str(path)))


def test_a_card_with_weights_does_not_fit_the_random_model(tmp_path):
    path = write_card(tmp_path / "card.json", weights_sha256="a" * 64)
    with pytest.raises(CardError, match="runs with random weights"):
        load_card(settings(level_card=str(path)))
    assert load_card(settings(level_card=str(write_card(tmp_path / "plain.json")))) is not None


def test_none_serves_without_figures_even_beside_a_wrong_card(tiny_weights):
    beside = write_card(card_beside(tiny_weights), weights_sha256="e" * 64)
    try:
        with pytest.raises(CardError):
            load_card(settings(weights=str(tiny_weights)))
        assert load_card(settings(weights=str(tiny_weights), level_card="none")) is None
        engine = Engine.load(settings(weights=str(tiny_weights), level_card="None"))
        assert not engine.info.has_card and engine.level_infos[0].accuracy is None
    finally:
        beside.unlink()


def test_weights_without_a_card_serve_without_figures_and_say_how_to_make_one(tiny_weights, caplog):
    with caplog.at_level(logging.WARNING, logger="service.engine.cards"):
        assert load_card(settings(weights=str(tiny_weights))) is None
    assert "make card WEIGHTS=" in caplog.text and file_sha256(tiny_weights)[:12] in caplog.text


def test_pretrained_deit_tiny_finds_the_packaged_card_by_hash(assets_dir):
    card = load_card(Settings(model="deit_tiny_patch16_224", device="cpu"))
    if card is None:
        pytest.skip("DeiT-Tiny is not in the Hugging Face cache HF_HOME names")
    assert card.model == "deit_tiny_patch16_224" and card.entry("dense").top1 == pytest.approx(79.83, abs=0.2)


# -- SAIT_LEVELS=auto: the card's speed table for this device kind chooses the levels --------
def _card_with_speed(kind: str):
    from models.card import LevelCard

    ips = {"dense": {"8": 100.0}, "l080": {"8": 102.0}, "l060": {"8": 140.0}, "l050": {"8": 150.0}}
    return LevelCard.from_dict({**CARD, "speed": {kind: {"precision": "fp32", "images_per_s": ips}}})


def test_auto_levels_come_from_the_speed_table_of_this_device_kind():
    import torch

    from models import load_model
    from models.speed import device_kind
    from service.engine.cards import requested_levels
    from service.settings import load_settings

    model = load_model(TINY, pretrained=False)
    cpu = torch.device("cpu")
    settings = load_settings(["--model", TINY, "--max-batch-size", "8"])
    assert settings.levels == "auto"
    # l080 is within the 5 % noise margin of dense: not offered; l050 is 7 % over l060: offered.
    assert requested_levels(settings, model, _card_with_speed(device_kind(cpu)), cpu) == ("dense", "l060", "l050")
    # No table for this kind of device (a GPU's only), or no card: every level.
    assert requested_levels(settings, model, _card_with_speed("cuda:Some GPU"), cpu) is None
    assert requested_levels(settings, model, None, cpu) is None
    # 'all' and a list are what they say, whatever the card.
    card = _card_with_speed(device_kind(cpu))
    assert requested_levels(load_settings(["--levels", "all"]), model, card, cpu) is None
    assert requested_levels(load_settings(["--levels", "dense,l080"]), model, card, cpu) == ("dense", "l080")
