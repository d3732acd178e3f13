"""Checkpoints as safetensors + JSON only (never pickles), written atomically.

out_dir/checkpoint/ holds model.safetensors (float32 student weights), optimizer.safetensors
(AdamW moments and step counts, keyed `state.<param index>.<name>`) and trainer.json (step,
history, the run's settings). Resuming from it reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_DIR = "checkpoint"
_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def _plain(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for idx, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"state.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return _plain(out)


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    # The state is keyed by parameter position: a checkpoint written with other parameter
    # groups (another model, or another order) would hand a parameter someone else's moments.
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for idx, entry in sorted(state.items()):
        shapes = {tuple(v.shape) for v in entry.values() if v.dim() > 0}
        if idx >= len(params) or shapes - {tuple(params[idx].shape)}:
            raise ValueError(
                f"checkpoint optimizer state {idx} does not fit this run's parameters "
                "(written by another model or another version of the training code)"
            )
    # Hyperparameters come from the current settings; only the moments are restored.
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def save_checkpoint(
    out_dir: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, trainer: dict
) -> Path:
    out = Path(out_dir)
    final, tmp, old = out / CHECKPOINT_DIR, out / f"{CHECKPOINT_DIR}.tmp", out / f"{CHECKPOINT_DIR}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_plain(model.state_dict()), str(tmp / "model.safetensors"))
    save_file(optimizer_tensors(optimizer), str(tmp / "optimizer.safetensors"))
    (tmp / "trainer.json").write_text(json.dumps(trainer, indent=1))
    # Swap in the new checkpoint so that a crash never leaves a half-written one.
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def has_checkpoint(out_dir: str | Path) -> bool:
    return (Path(out_dir) / CHECKPOINT_DIR / "trainer.json").is_file()


def load_checkpoint(out_dir: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model and optimizer in place; returns trainer.json."""
    ckpt = Path(out_dir) / CHECKPOINT_DIR
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=True)
    load_optimizer_tensors(optimizer, load_file(str(ckpt / "optimizer.safetensors")))
    return json.loads((ckpt / "trainer.json").read_text())


def export_weights(path: str | Path, model: torch.nn.Module, *, dtype: str) -> Path:
    """The student's timm weights, loadable with `load_model(name, weights=path)`."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to(_DTYPES[dtype]) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_file(_plain(tensors), str(p))
    return p
