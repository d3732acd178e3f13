"""models.fingerprint: the sha256 that ties a level card to one weights file."""

from __future__ import annotations

import hashlib
import json

import pytest

from models import TINY_TEST_MODEL, WeightsError
from models.card import CARDS_DIR
from models.fingerprint import file_sha256, pretrained_file, weights_fingerprint

DEIT_TINY = "deit_tiny_patch16_224"


def test_a_local_file_is_named_by_the_sha256_of_its_bytes(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"not really weights, but bytes all the same" * 50_000)
    fp = weights_fingerprint(DEIT_TINY, path)
    assert fp.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == file_sha256(path)
    assert fp.source == "file" and fp.path == path.resolve()
    assert fp.as_dict() == {"weights_sha256": fp.sha256, "weights_source": "file", "weights_file": "w.safetensors"}
    path.write_bytes(path.read_bytes()[:-1] + b"?")  # one byte changed: another fingerprint
    assert weights_fingerprint(DEIT_TINY, path).sha256 != fp.sha256


def test_the_random_test_model_has_no_file_and_a_missing_file_is_an_error(tmp_path):
    assert weights_fingerprint(TINY_TEST_MODEL, None) is None
    with pytest.raises(WeightsError, match="weights file not found"):
        weights_fingerprint(TINY_TEST_MODEL, tmp_path / "absent.safetensors")


def test_pretrained_weights_are_the_cached_hub_file_of_the_packaged_card(assets_dir):
    found = pretrained_file(DEIT_TINY)
    if found is None:
        pytest.skip("DeiT-Tiny is not in the Hugging Face cache HF_HOME names")
    path, source = found
    assert path.name == "model.safetensors" and source.startswith("hf-hub:timm/deit_tiny_patch16_224.fb_in1k@")
    fp = weights_fingerprint(DEIT_TINY, None)
    assert fp.sha256 == file_sha256(path)
    card = json.loads((CARDS_DIR / f"{DEIT_TINY}.json").read_text())
    assert card["weights_sha256"] == fp.sha256


def test_pretrained_weights_missing_from_the_cache_are_an_error(monkeypatch):
    monkeypatch.setattr("models.fingerprint.pretrained_file", lambda model: None)
    with pytest.raises(WeightsError, match="not in the Hugging Face cache"):
        weights_fingerprint(DEIT_TINY, None)
