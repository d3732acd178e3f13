"""The dense/sparse self-distillation loop (SaiT, arXiv 2210.05832, with slimmable sampling).

Each step: the frozen teacher (a copy of the original dense model) labels the batch once; the
student (the shared weights) then runs at the dense level, the sparsest level and
`random_levels` levels between them ("sandwich rule" of slimmable networks), each level's loss
is backpropagated on its own (gradients accumulate, memory stays that of one level), and one
AdamW step follows. Level sampling, mixup and augmentation are seeded per step, so a resumed
run is the uninterrupted run.
"""

from __future__ import annotations

import copy
import random
import time
import warnings
from pathlib import Path

import torch
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from tqdm import tqdm

from models import DENSE, SparseViT, load_model
from models.device import resolve_device
from models.evalset import read_labels
from models.train.checkpoint import export_weights, has_checkpoint, load_checkpoint, save_checkpoint
from models.train.config import RESUME_KEYS, TrainConfig
from models.train.curves import plot_curves
from models.train.data import (
    EpochSampler,
    SeededImages,
    TrainDataError,
    build_transform,
    epoch_loader,
    mixup,
    read_train_labels,
)
from models.train.losses import distill_kl, labelled_ce, token_kl
from models.train.memory import AugmentSettings, MemoryPool, decode_pool
from models.train.scores import dense_with_class_attention


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> CosineLRScheduler:
    """Per optimizer step: linear warm-up from min_lr to lr over warmup_steps, then cosine decay to min_lr.

    The rate is a function of the step alone (one cycle, no noise): the scheduler's state_dict
    holds only these settings and `metric`, so a checkpoint stores none of it, and calling
    `step_update(step)` before every step gives a resumed run the uninterrupted run's rates.
    """
    warm = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return CosineLRScheduler(
        optimizer,
        t_initial=max(total_steps - warm, 1),
        lr_min=cfg.min_lr,
        warmup_t=warm,
        warmup_lr_init=cfg.min_lr,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def freeze_prefix(vit: torch.nn.Module, blocks: int) -> list[str]:
    """Freeze the embedding (patch, position, class and register tokens) and blocks [0, blocks); their names."""
    if blocks == 0:
        return []
    if blocks > len(vit.blocks):
        raise ValueError(f"freeze_blocks={blocks}, but the model has {len(vit.blocks)} blocks")
    prefix = ("patch_embed.", "pos_embed", "cls_token", "reg_token", *(f"blocks.{i}." for i in range(blocks)))
    frozen = [n for n, p in vit.named_parameters() if n.startswith(prefix)]
    for name, param in vit.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    return frozen


def ordered_levels(model: SparseViT, names: tuple[str, ...] | None) -> list[str]:
    """Training levels, densest first; dense is always trained (it must keep its accuracy)."""
    for n in names or ():
        model.level(n)  # KeyError with the known names
    chosen = set(names or model.levels) | {DENSE}
    return sorted(chosen, key=lambda n: -model.level(n).gflops)


def sample_levels(levels: list[str], *, k: int, rng: random.Random) -> list[str]:
    """Densest and sparsest always, plus k distinct levels from between them."""
    middle = levels[1:-1]
    picked = rng.sample(middle, min(k, len(middle)))
    return [levels[0], *sorted(picked, key=levels.index), levels[-1]] if len(levels) > 1 else levels


class Trainer:
    """Holds the models, optimizer and data of one run.

    Args:
        cfg: the run's settings.
    """

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.device = resolve_device(cfg.device)
        self.student = load_model(cfg.model, cfg.weights).to(self.device)
        self.teacher = copy.deepcopy(self.student).eval().requires_grad_(False)
        self.student.train()
        self.levels = ordered_levels(self.student, cfg.levels)
        if len(self.levels) < 2:
            raise ValueError("training needs at least one sparse level besides dense")
        depth = self.student.shape.depth
        self.probe_block = min(s.block for n in self.levels[1:] for s in self.student.level(n).schedule[:1])
        self.teacher_block = cfg.teacher_attn_block % depth
        for folder in cfg.eval_sets or ():  # fail now, not after the training
            read_labels(folder, Path(folder) / "labels.csv")
        rows = read_train_labels(cfg.data_dir, cfg.labels_path)
        self.steps_per_epoch = len(rows) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise TrainDataError(f"{len(rows)} training images are fewer than one batch of {cfg.batch_size}")
        if cfg.data == "memory":
            images, labels = decode_pool(rows, size=cfg.pool_size, threads=cfg.num_workers, progress=cfg.progress)
            augment = AugmentSettings(cfg.crop_scale_min, cfg.rotate_deg, cfg.color_jitter) if cfg.augment else None
            self.pool = MemoryPool(
                images, labels, data_config=self.student.data_config, settings=augment, device=self.device
            )
        else:
            transform = build_transform(
                self.student.data_config,
                augment=cfg.augment,
                auto_augment=cfg.auto_augment,
                crop_scale_min=cfg.crop_scale_min,
            )
            self.dataset = SeededImages(rows, transform)
        self.n_images = len(rows)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        vit = self.student.timm_model
        freeze_prefix(vit, cfg.freeze_blocks)
        # The token-score term trains the probe block's class attention; when that block is frozen
        # it has nothing to train (its gradient is zero), so it is skipped, and said so.
        self.use_tokens = cfg.token_weight > 0 and self.probe_block >= cfg.freeze_blocks
        if cfg.token_weight > 0 and not self.use_tokens:
            warnings.warn(
                f"token_weight={cfg.token_weight} is inert: its block ({self.probe_block}) is among the "
                f"{cfg.freeze_blocks} frozen ones; the token-score term is skipped",
                stacklevel=2,
            )
        # No weight decay on norms, biases, position embedding and class token (timm's rule); frozen ones left out.
        groups = param_groups_weight_decay(vit, cfg.weight_decay, no_weight_decay_list=vit.no_weight_decay())
        # fused: one kernel for the whole update on CUDA (5.7 M parameters in 150 tensors for DeiT-Tiny).
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), fused=fused)
        self.scheduler = create_scheduler(self.optimizer, cfg, self.total_steps)
        self.step = 0
        self.history: list[dict] = []
        self.command = "python -m models.train"  # recorded in the card of the exported weights

    # -- one step -------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def train_step(self, x: torch.Tensor, labels: torch.Tensor) -> dict:
        cfg = self.cfg
        rng = random.Random(cfg.seed * 7_919 + self.step)
        self.scheduler.step_update(self.step)
        lr = self.optimizer.param_groups[0]["lr"]
        x = x.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        mix = None
        if cfg.mixup_alpha > 0:
            x, mix = mixup(x, labels, rng.betavariate(cfg.mixup_alpha, cfg.mixup_alpha))
        with torch.no_grad(), self._autocast():
            if self.use_tokens:
                t_logits, t_rows = dense_with_class_attention(self.teacher, x, {self.teacher_block})
                t_attn = t_rows[self.teacher_block]
            else:
                t_logits = self.teacher(x, level=DENSE)
        sampled = sample_levels(self.levels, k=cfg.random_levels, rng=rng)
        kd_by_level, ce_by_level, total, token = {}, {}, 0.0, 0.0
        target = t_logits  # what the sparse levels distil; the student's dense output under sparse_target="dense"
        for name in sampled:
            dense = name == self.levels[0]
            with self._autocast():
                tok = None
                if dense and self.use_tokens:
                    logits, rows = dense_with_class_attention(self.student, x, {self.probe_block})
                    tok = token_kl(rows[self.probe_block], t_attn)
                else:
                    logits = self.student(x, level=name)
                kd = distill_kl(logits, t_logits if dense else target, cfg.temperature)
                ce = labelled_ce(logits, labels, mix=mix)
                loss = (cfg.dense_kd_weight if dense else 1.0) * kd
                if cfg.dense_ce or not dense:
                    loss = loss + cfg.ce_weight * ce
                if tok is not None:
                    loss = loss + cfg.token_weight * tok
            if dense and cfg.sparse_target == "dense":
                target = logits.detach()
            (loss / len(sampled)).backward()
            kd_by_level[name] = kd.item()
            ce_by_level[name] = ce.item()
            total += loss.item() / len(sampled)
            if tok is not None:
                token = tok.item()
        trainable = [p for p in self.student.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {
            "step": self.step,
            "lr": lr,
            "loss": total,
            "kd": kd_by_level,
            "ce": sum(ce_by_level.values()) / len(sampled),
            "ce_by_level": ce_by_level,
            "token": token,
            "grad_norm": float(grad_norm),
            "levels": sampled,
        }

    # -- checkpoints ----------------------------------------------------------------------
    def save(self) -> Path:
        trainer = {
            "step": self.step,
            "total_steps": self.total_steps,
            "config": self.cfg.as_dict(),
            "history": self.history,
        }
        return save_checkpoint(
            self.cfg.out_dir, model=self.student.timm_model, optimizer=self.optimizer, trainer=trainer
        )

    def resume(self) -> None:
        state = load_checkpoint(self.cfg.out_dir, model=self.student.timm_model, optimizer=self.optimizer)
        saved, now = state["config"], self.cfg.as_dict()
        differ = [k for k in RESUME_KEYS if saved.get(k) != now.get(k)]
        if differ:
            raise ValueError(
                f"cannot resume: {', '.join(f'{k}={saved.get(k)!r}' for k in differ)} in the checkpoint "
                f"differ from this run's settings"
            )
        self.step = int(state["step"])
        self.history = list(state["history"])

    # -- the run --------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if cfg.resume and has_checkpoint(out):
            self.resume()
        stop = min(self.total_steps, cfg.stop_after or self.total_steps)
        started = time.monotonic()
        bar = tqdm(total=stop, initial=self.step, desc="train", unit="step", disable=not cfg.progress)
        timed_out = False
        while self.step < stop and not timed_out:
            epoch, skip = divmod(self.step, self.steps_per_epoch)
            for x, labels in self.batches(epoch, skip):
                record = self.train_step(x, labels)
                self.history.append(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                if self.step % cfg.save_every == 0:
                    self.save()
                timed_out = cfg.max_minutes is not None and time.monotonic() - started > cfg.max_minutes * 60
                if self.step >= stop or timed_out:
                    break
        bar.close()
        train_s = time.monotonic() - started
        self.save()
        weights = export_weights(out / "model.safetensors", self.student.timm_model, dtype=cfg.export_dtype)
        curves = plot_curves(self.history, out / "loss_curves.png", dense=self.levels[0], sparsest=self.levels[-1])
        card = None
        if cfg.eval_sets:
            card = write_card(cfg, weights, device=self.device, command=self.command)
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "finished": self.step >= self.total_steps,
            "stopped_by_time": timed_out,
            "train_s": round(train_s, 1),
            "wall_s": round(time.monotonic() - started, 1),
            "weights": str(weights),
            "card": str(card) if card else None,
            "curves": str(curves) if curves else None,
            "last": self.history[-1] if self.history else None,
        }

    def batches(self, epoch: int, skip: int):
        """The epoch's batches from `skip` on: (normalized images, labels), each on the training device."""
        cfg = self.cfg
        if cfg.data == "loader":
            yield from epoch_loader(
                self.dataset,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                epoch=epoch,
                skip_batches=skip,
                num_workers=cfg.num_workers,
                pin_memory=self.device.type == "cuda",
            )
            return
        order = [i for i, _ in EpochSampler(self.n_images, seed=cfg.seed, epoch=epoch)]
        for b in range(skip, self.steps_per_epoch):
            # The step's augmentation draws from its own generator: the same batch on any device, and on resume.
            generator = torch.Generator().manual_seed((cfg.seed * 1_000_003 + epoch) * 100_003 + b)
            yield self.pool.batch(order[b * cfg.batch_size : (b + 1) * cfg.batch_size], generator)


def write_card(cfg: TrainConfig, weights: Path, *, device: torch.device, command: str) -> Path:
    """Measure every level of the exported weights (the file itself, as served) on cfg.eval_sets; the card beside it."""
    import json

    from models.card import card_beside
    from models.evaluate import evaluate_set, run_record
    from models.make_card import combine

    model = load_model(cfg.model, weights)
    runs = []
    # fp32 as on the CPU: no TF32 in the patch embedding's convolution either.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        for folder in cfg.eval_sets:
            rows, n = evaluate_set(
                model,
                folder,
                Path(folder) / "labels.csv",
                levels=list(model.levels),
                batch_size=cfg.eval_batch_size,
                device=device,
                progress=cfg.progress,
            )
            record = run_record(
                model=cfg.model,
                weights=str(weights),
                device=device,
                images=folder,
                n=n,
                batch_size=cfg.eval_batch_size,
                command=command,
            )
            runs.append(record | {"levels": rows})
    path = card_beside(weights)
    path.write_text(json.dumps(combine(runs), indent=2) + "\n")
    return path


def train(cfg: TrainConfig, *, command: str = "python -m models.train") -> dict:
    """Run (or resume) one training run; returns a summary. `command` is recorded in the card."""
    trainer = Trainer(cfg)
    trainer.command = command
    return trainer.run()
