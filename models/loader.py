"""load_model: the one entry point the service uses to get a SparseViT."""

from __future__ import annotations

from pathlib import Path

from models.sparse_vit import SparseViT
from models.weights import TINY_TEST_MODEL, create_timm_model, load_weights_into


def load_model(name: str, weights: str | Path | None = None, *, pretrained: bool | None = None) -> SparseViT:
    """Create `name` (a timm ViT) with weights, wrapped as a SparseViT in eval mode.

    Args:
        name: timm model name, or `vit_tiny_test` for a tiny random ViT.
        weights: a local .safetensors or .pth file; when None, timm's pretrained weights
            (through the Hugging Face cache that HF_HOME names).
        pretrained: override; defaults to `weights is None and name != vit_tiny_test`.
    """
    if pretrained is None:
        pretrained = weights is None and name != TINY_TEST_MODEL
    timm_model = create_timm_model(name, pretrained=pretrained)
    if weights is not None:
        load_weights_into(timm_model, weights)
    return SparseViT(timm_model).eval()
