"""Create a timm ViT and load its weights, with one-line errors for every bad case.

Only two formats are read: `.safetensors`, and `.pth`/`.pt` through
`torch.load(weights_only=True)`, which refuses to unpickle code.
"""

from __future__ import annotations

from pathlib import Path

import torch

# A tiny random ViT for tests and mechanics (embed 64, depth 6); never pretrained.
TINY_TEST_MODEL = "vit_tiny_test"
_TINY_KWARGS = dict(
    img_size=224,
    patch_size=16,
    embed_dim=64,
    depth=6,
    num_heads=4,
    mlp_ratio=4.0,
    num_classes=1000,
    class_token=True,
    global_pool="token",
)


class WeightsError(ValueError):
    """A model or weights file that cannot be used; the message is one readable line."""


def create_timm_model(name: str, *, pretrained: bool) -> torch.nn.Module:
    """timm.create_model with clear errors; `vit_tiny_test` is a tiny random ViT."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if name == TINY_TEST_MODEL:
        torch.manual_seed(0)
        return VisionTransformer(**_TINY_KWARGS).eval()
    if not timm.is_model(name):
        raise WeightsError(f"unknown model name {name!r} (not a timm model)")
    try:
        model = timm.create_model(name, pretrained=pretrained)
    except (OSError, RuntimeError, ValueError) as exc:  # hub miss offline, bad cache ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"cannot load pretrained weights for {name!r}: {first}. Set HF_HOME to a Hugging Face "
            f"cache that holds them (offline: HF_HUB_OFFLINE=1), or pass --weights FILE"
        ) from exc
    if not isinstance(model, VisionTransformer):
        raise WeightsError(f"model {name!r} is a {type(model).__name__}, not a timm VisionTransformer")
    return model.eval()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from a .safetensors or a .pth (weights_only) file."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file not found: {p}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p), device="cpu")
        elif suffix in (".pth", ".pt"):
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        else:
            raise WeightsError(f"unsupported weights file type {suffix!r} for {p} (use .safetensors or .pth)")
    except WeightsError:
        raise
    except Exception as exc:  # corrupt file, pickle with code, wrong format
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"cannot read weights file {p}: {msg[:200]}") from exc
    # Checkpoints often wrap the state dict.
    for key in ("state_dict", "model", "model_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {p} does not hold a flat dict of tensors")
    return state


def load_weights_into(model: torch.nn.Module, path: str | Path) -> None:
    """Load a local file into `model`, strictly: every key present, every shape right."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise WeightsError(f"weights file {path} does not match the model's keys: {', '.join(parts)}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise WeightsError(
                f"weights file {path} is for another architecture: {key} has shape "
                f"{tuple(tensor.shape)}, the model expects {tuple(own[key].shape)}"
            )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
