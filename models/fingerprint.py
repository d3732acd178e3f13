"""Which weights a figure was measured with: the sha256 of the weights file.

A level card is only true of the weights it was measured with, so a card records the file's
sha256 and the service compares it with the file it serves. For timm's pretrained weights the
file is the one in the Hugging Face cache that timm loads (`HF_HOME`); the tiny random test
model has no file (its weights come from a fixed seed) and so no fingerprint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from models.weights import TINY_TEST_MODEL, WeightsError

# The files timm reads from a hub repository, in the order it tries them.
_HUB_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Fingerprint:
    """The weights file behind a model.

    Args:
        sha256: hex digest of the file's bytes.
        path: the file.
        source: "file" for a local file, else "hf-hub:<repo>@<revision>".
    """

    sha256: str
    path: Path
    source: str

    def as_dict(self) -> dict:
        """The card's (additive) fields naming its weights."""
        return {"weights_sha256": self.sha256, "weights_source": self.source, "weights_file": self.path.name}


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def pretrained_file(model: str) -> tuple[Path, str] | None:
    """(cached file, "hf-hub:<repo>@<revision>") of timm's pretrained weights, or None when not cached."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(model) if timm.is_model(model) else None
    repo = getattr(cfg, "hf_hub_id", None)
    if not repo:
        return None
    for name in _HUB_FILES:
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str):
            path = Path(found)
            # The cache layout is .../snapshots/<revision>/<file>.
            revision = path.parent.name if path.parent.parent.name == "snapshots" else "unknown"
            return path, f"hf-hub:{repo}@{revision}"
    return None


def weights_fingerprint(model: str, weights: str | Path | None) -> Fingerprint | None:
    """The fingerprint of the weights `load_model(model, weights)` loads; None for the random test model.

    Raises:
        WeightsError: a weights file that is not there, or pretrained weights not in the cache.
    """
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"weights file not found: {path}")
        return Fingerprint(file_sha256(path), path.resolve(), "file")
    if model == TINY_TEST_MODEL:
        return None
    cached = pretrained_file(model)
    if cached is None:
        raise WeightsError(
            f"pretrained weights for {model!r} are not in the Hugging Face cache (HF_HOME); "
            "pass --weights FILE to name the file"
        )
    path, source = cached
    return Fingerprint(file_sha256(path), path, source)
