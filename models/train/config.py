"""Settings of one training run (`python -m models.train --help` lists them as flags)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

# The settings a resumed run must share with the run that wrote the checkpoint.
RESUME_KEYS = (
    "model",
    "batch_size",
    "seed",
    "epochs",
    "max_steps",
    "levels",
    "random_levels",
    "data",
    "pool_size",
    "freeze_blocks",
)
DATA_PATHS = ("memory", "loader")
SPARSE_TARGETS = ("teacher", "dense")


@dataclass(frozen=True)
class TrainConfig:
    """One dense/sparse self-distillation run.

    Args:
        model: timm model name (or `vit_tiny_test`).
        weights: starting weights file (.safetensors/.pth); None: timm's pretrained weights.
        data_dir: folder of training images.
        labels_csv: CSV `filename,class_index` (class_index may be empty); default data_dir/labels.csv.
        out_dir: where checkpoints, the exported model, history and loss curves go.
        epochs: passes over the data (the schedule length unless max_steps is set).
        max_steps: schedule length in optimizer steps (overrides epochs).
        stop_after: stop (with a checkpoint) after this step, keeping the full schedule; for
            splitting one run over several sessions with --resume.
        max_minutes: stop (with a checkpoint) once this much wall time has passed.
        batch_size: images per step (every sampled level sees the same batch).
        lr / min_lr / warmup_steps / weight_decay / clip_grad: AdamW; the rate warms up linearly
            from min_lr to lr over warmup_steps, then decays along a cosine to min_lr (timm's
            CosineLRScheduler, per step); gradient norm clipped to clip_grad.
        temperature: softening of teacher and student logits in the KL term.
        dense_kd_weight: weight of the dense level's KL to the teacher (the other levels' KL
            weigh 1): what keeps the dense level the teacher's.
        dense_ce: cross-entropy on the dense level too (off: the dense level learns only the
            teacher's outputs; labels reach the sparse levels alone).
        sparse_target: what the sparse levels distil: "teacher" (the frozen original) or
            "dense" (the student's own dense output of the same step, detached: SaiT's
            self-distillation).
        freeze_blocks: keep the embedding (patch, position, class token) and the first this many
            blocks as they start: changes there move every level's input, the dense level's
            included (docs/training.md, "Keep dense": with dense_kd_weight 4 it kept the dense KL
            under a third of the first run's recipe, the sparsest level's no worse).
        ce_weight: weight of cross-entropy on images that carry a label.
        token_weight: weight of the token-score term (0 turns it off).
        teacher_attn_block: teacher block whose class attention the early scores learn (-1: last).
        levels: level names to train (default: all of the model's).
        random_levels: levels sampled per step between the densest and the sparsest.
        data: "memory": the pool decoded once into a uint8 tensor on the device, augmented there
            (models.train.memory); "loader": a DataLoader of processes running timm's PIL
            transform per image.
        pool_size: side of the stored square images of the "memory" path.
        augment: augmentation on (memory: random resized crop, flip, rotation, colour jitter;
            loader: timm's random resized crop, flip, RandAugment); off: no augmentation.
        auto_augment: timm auto-augment spec (loader path).
        crop_scale_min: smallest area fraction of the random resized crop.
        rotate_deg / color_jitter: largest rotation and colour-jitter strength (memory path).
        mixup_alpha: mixup Beta(alpha, alpha); 0 turns mixup off.
        num_workers: data loader processes (loader path); decoding threads (memory path).
        seed: fixes data order, augmentation, level sampling and mixup per step.
        device: "auto", "cpu" or "cuda" (bf16 autocast on CUDA).
        save_every: checkpoint every this many steps (and at the end).
        export_dtype: dtype of the exported model.safetensors ("fp16" or "fp32").
        eval_sets: labelled folders (each with a labels.csv) on which every level of the exported
            weights is measured at the end; their card is written beside them
            (model.safetensors.card.json). None: no card.
        eval_batch_size: batch size of that evaluation.
        resume: continue from out_dir/checkpoint when it exists.
        progress: show a tqdm progress bar.
    """

    model: str = "deit_tiny_patch16_224"
    weights: str | None = None
    data_dir: str = "../shared/assets/distill-pool"
    labels_csv: str | None = None
    out_dir: str = "out/train"
    epochs: int = 30
    max_steps: int | None = None
    stop_after: int | None = None
    max_minutes: float | None = None
    batch_size: int = 128
    lr: float = 5e-5
    min_lr: float = 1e-6
    warmup_steps: int = 50
    weight_decay: float = 0.05
    clip_grad: float = 1.0
    temperature: float = 1.0
    dense_kd_weight: float = 4.0  # keep dense: docs/training.md, "Keep dense" (bench.train_recipes)
    dense_ce: bool = True
    sparse_target: str = "teacher"
    freeze_blocks: int = 4
    ce_weight: float = 0.1
    token_weight: float = 0.1
    teacher_attn_block: int = -1
    levels: tuple[str, ...] | None = None
    random_levels: int = 1
    data: str = "memory"
    pool_size: int = 256
    augment: bool = True
    # mmax9: at magnitude 10 timm's increasing posterize keeps 0 bits, which Pillow (13 here) refuses
    # with an error, about 3 images in 1000 (tests/models/train/test_data.py shows both).
    auto_augment: str = "rand-m9-mstd0.5-inc1-mmax9"
    crop_scale_min: float = 0.25
    rotate_deg: float = 10.0
    color_jitter: float = 0.4
    mixup_alpha: float = 0.0
    num_workers: int = 4
    seed: int = 0
    device: str = "auto"
    save_every: int = 200
    export_dtype: str = "fp16"
    eval_sets: tuple[str, ...] | None = None
    eval_batch_size: int = 256
    resume: bool = False
    progress: bool = True

    def __post_init__(self):
        checks = [
            (self.batch_size >= 2, f"batch_size must be >= 2, got {self.batch_size}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}"),
            (self.lr > 0 and self.min_lr >= 0, "lr must be > 0 and min_lr >= 0"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (self.ce_weight >= 0 and self.token_weight >= 0, "loss weights must be >= 0"),
            (self.random_levels >= 0, f"random_levels must be >= 0, got {self.random_levels}"),
            (self.mixup_alpha >= 0, f"mixup_alpha must be >= 0, got {self.mixup_alpha}"),
            (0 < self.crop_scale_min <= 1, f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}"),
            (self.export_dtype in ("fp16", "fp32"), f"export_dtype must be fp16 or fp32, got {self.export_dtype}"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device}"),
            (self.dense_kd_weight >= 0, f"dense_kd_weight must be >= 0, got {self.dense_kd_weight}"),
            (self.freeze_blocks >= 0, f"freeze_blocks must be >= 0, got {self.freeze_blocks}"),
            (self.sparse_target in SPARSE_TARGETS, f"sparse_target must be teacher or dense, got {self.sparse_target}"),
            (self.data in DATA_PATHS, f"data must be memory or loader, got {self.data}"),
            (self.pool_size >= 16, f"pool_size must be >= 16, got {self.pool_size}"),
            (0 <= self.color_jitter < 1, f"color_jitter must be in [0, 1), got {self.color_jitter}"),
            (0 <= self.rotate_deg <= 180, f"rotate_deg must be in [0, 180], got {self.rotate_deg}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    @property
    def labels_path(self) -> Path:
        return Path(self.labels_csv) if self.labels_csv else Path(self.data_dir) / "labels.csv"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["levels"] = list(self.levels) if self.levels else None
        d["eval_sets"] = list(self.eval_sets) if self.eval_sets else None
        return d
