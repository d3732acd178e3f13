"""Fixtures shared by the whole suite: the shared assets folder and the tiny random ViT.

The assets (real DeiT-Tiny weights, the two ImageNet evaluation sets) live outside the
repository at ../shared/assets; tests that need them skip, saying why, where they are absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ASSETS_DIR = (REPO / ".." / "shared" / "assets").resolve()
HF_CACHE = ASSETS_DIR / "hf-cache"
DEIT_TINY = "deit_tiny_patch16_224"

# As the Makefile does: point the Hugging Face cache at the shared assets, offline. Set at
# import, before any test imports huggingface_hub (which reads these variables only once).
if HF_CACHE.is_dir():
    os.environ.setdefault("HF_HOME", str(HF_CACHE))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def assets_reason(*parts: str) -> str | None:
    """Why a test needing ASSETS_DIR/<parts> must skip, or None when it is there."""
    path = ASSETS_DIR.joinpath(*parts)
    if not path.exists():
        return f"shared assets absent: {path} (see ../shared/assets/README.md)"
    return None


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    """../shared/assets from the repository root; skips when it is absent."""
    reason = assets_reason()
    if reason:
        pytest.skip(reason)
    return ASSETS_DIR


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny random ViT (embed 64, depth 6) with the default levels, in eval mode."""
    from models import TINY_TEST_MODEL, load_model

    return load_model(TINY_TEST_MODEL)


@pytest.fixture(scope="session")
def deit_tiny(assets_dir):
    """The real pretrained DeiT-Tiny, loaded offline from the assets' Hugging Face cache."""
    reason = assets_reason("hf-cache")
    if reason:
        pytest.skip(reason)
    from models import load_model

    return load_model(DEIT_TINY)


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's small forwards on one thread, then restore the thread count.

    Tiny models gain nothing from intra-op threads, and on a shared 2-core machine the
    threads' spin-waiting made them ten times slower.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
