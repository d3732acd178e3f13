"""Keep dense: training recipes compared on a short CPU proxy run of the real DeiT-Tiny.

    HF_HOME=../shared/assets/hf-cache HF_HUB_OFFLINE=1 flock /tmp/sait-cpu.lock \\
      python -m bench.train_recipes --steps 40 --batch-size 16 \\
        --docs docs/training.md --plot docs/training_keep_dense.png

Every recipe trains the same pretrained DeiT-Tiny for the same steps on the same pool images
(a seeded subset of ../shared/assets/distill-pool), with the same batches, augmentation and
level draws; only the recipe's settings differ. Then each student is measured against the
frozen teacher (the original weights) on held-out pool images (never trained on; eval
transform, fp32): the KL at the dense and at the sparsest level, and top-1 agreement with the
teacher. A recipe is `NAME:key=value,...` over models.train.TrainConfig fields; the default
pair is today's recipe (before) against the current defaults (after).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from models import DENSE, WeightsError, load_model
from models.machine import cpu_model, replace_block
from models.preprocess import normalize_uint8, pil_to_uint8
from models.train import TrainConfig
from models.train.data import TrainDataError, read_train_labels
from models.train.loop import Trainer
from models.train.losses import distill_kl

POOL = Path("../shared/assets/distill-pool")
# The recipe of the first GPU run (commit b45e7ce, ../shared/measurements/h200-2026-12-04).
BEFORE = "before:dense_kd_weight=1,dense_ce=true,sparse_target=teacher"
AFTER = "after:"  # the current defaults of TrainConfig
BEGIN, END = "<!-- keep-dense:begin -->", "<!-- keep-dense:end -->"


def parse_recipe(spec: str) -> tuple[str, dict]:
    """`NAME:key=value,...` -> (name, TrainConfig overrides), values typed like the field's default."""
    name, _, body = spec.partition(":")
    if not name:
        raise ValueError(f"recipe {spec!r} needs a name: NAME:key=value,...")
    types = {f.name: type(f.default) for f in fields(TrainConfig)}
    overrides = {}
    for item in filter(None, (s.strip() for s in body.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or key not in types:
            raise ValueError(f"recipe {name}: {item!r} is not key=value over a TrainConfig field")
        kind = types[key]
        if kind is bool:
            if raw.lower() not in ("true", "false"):
                raise ValueError(f"recipe {name}: {key} takes true or false, got {raw!r}")
            overrides[key] = raw.lower() == "true"
        else:
            overrides[key] = kind(raw) if kind in (int, float, str) else raw
    return name, overrides


def split_pool(pool: Path, *, train_images: int, heldout: int, seed: int) -> tuple[list[str], list[Path]]:
    """A seeded subset of the pool for training (CSV lines) and disjoint held-out images."""
    with (pool / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    if train_images + heldout > len(rows):
        raise ValueError(f"the pool has {len(rows)} images, fewer than {train_images} + {heldout}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    train = [f"{rows[i]['filename']},{rows[i]['class_index']}" for i in order[:train_images]]
    held = [pool / rows[i]["filename"] for i in order[train_images : train_images + heldout]]
    return train, held


@torch.inference_mode()
def measure(trainer: Trainer, crops: torch.Tensor, *, batch_size: int = 32) -> dict:
    """KL(teacher || student) and top-1 agreement at dense and at the sparsest level, on `crops`."""
    student, teacher = trainer.student.eval(), trainer.teacher
    sparsest = trainer.levels[-1]
    sums = {"kl_dense": 0.0, "kl_sparsest": 0.0, "agree_dense": 0, "agree_sparsest": 0}
    for start in range(0, len(crops), batch_size):
        x = normalize_uint8(crops[start : start + batch_size], student.data_config)
        t = teacher(x, level=DENSE)
        for key, level in (("dense", DENSE), ("sparsest", sparsest)):
            s = student(x, level=level)
            sums[f"kl_{key}"] += distill_kl(s, t, 1.0).item() * len(x)
            sums[f"agree_{key}"] += int((s.argmax(-1) == t.argmax(-1)).sum())
    student.train()
    n = len(crops)
    return {k: v / n for k, v in sums.items()} | {"sparsest": sparsest}


def run_recipe(name: str, cfg: TrainConfig, crops: torch.Tensor) -> dict:
    trainer = Trainer(cfg)
    started = time.perf_counter()
    history = []
    for x, labels in tqdm(trainer.batches(0, 0), total=trainer.total_steps, desc=name, unit="step"):
        history.append(trainer.train_step(x, labels))
        if trainer.step >= trainer.total_steps:
            break
    train_s = time.perf_counter() - started
    return {"recipe": name, "train_s": round(train_s, 1), **measure(trainer, crops), "history": history}


def markdown(results: list[dict], *, specs: list[str], command: str, base: TrainConfig, heldout: int) -> str:
    start, first = results[0], results[1]
    rows = [
        f"| recipe | settings | dense KL | {first['sparsest']} KL | dense agreement | {first['sparsest']} agreement "
        f"| dense KL / {first['recipe']}'s | train s |",
        "|---|---|---|---|---|---|---|---|",
        f"| {start['recipe']} | - | {start['kl_dense']:.5f} | {start['kl_sparsest']:.4f} | {start['agree_dense']:.3f} "
        f"| {start['agree_sparsest']:.3f} | - | - |",
    ]
    for r, spec in zip(results[1:], specs):
        settings = spec.partition(":")[2] or "defaults"
        rows.append(
            f"| {r['recipe']} | `{settings}` | {r['kl_dense']:.5f} | {r['kl_sparsest']:.4f} | "
            f"{r['agree_dense']:.3f} | {r['agree_sparsest']:.3f} | {r['kl_dense'] / first['kl_dense']:.2f} | "
            f"{r['train_s']:.0f} |"
        )
    head = (
        f"`{command}` on {cpu_model()} ({torch.get_num_threads()} threads), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {base.max_steps} steps of {base.batch_size} "
        f"images of DeiT-Tiny (lr {base.lr:g}, warm-up {base.warmup_steps}, data path `{base.data}`), then KL to "
        f"the teacher and top-1 agreement with it on {heldout} held-out pool images (fp32)."
    )
    return "\n".join([BEGIN, head, "", *rows, END])


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for r in (r for r in results if r["history"]):
        steps = [h["step"] for h in r["history"]]
        for ax, level in ((axes[0], DENSE), (axes[1], r["sparsest"])):
            ax.plot(steps, [h["kd"][level] for h in r["history"]], label=r["recipe"], linewidth=1.2)
            ax.set_title(f"training KL to the teacher, {level}", fontsize=10)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("KL (batch)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench.train_recipes", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", action="append", help=f"NAME:key=value,... (default: {BEFORE!r} and {AFTER!r})")
    p.add_argument("--model", default="deit_tiny_patch16_224")
    p.add_argument("--weights", help="starting weights (default: pretrained via HF_HOME)")
    p.add_argument("--pool", default=str(POOL), help="training pool folder with labels.csv")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--heldout", type=int, default=128, help="held-out pool images for the measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results (with per-step history) here")
    p.add_argument("--docs", help="markdown file: the table replaces the block between keep-dense markers")
    p.add_argument("--plot", help="PNG of the training KL per step, dense and sparsest, per recipe")
    args = p.parse_args(argv)
    command = "python -m bench.train_recipes " + " ".join(argv)
    specs = args.recipe or [BEFORE, AFTER]
    try:
        recipes = [parse_recipe(s) for s in specs]
        if args.steps < 1 or args.batch_size < 2:
            raise ValueError("--steps must be >= 1 and --batch-size >= 2")
        pool = Path(args.pool)
        if not (pool / "labels.csv").is_file():
            raise TrainDataError(f"training pool not found: {pool}/labels.csv")
        train_rows, held = split_pool(
            pool, train_images=args.steps * args.batch_size, heldout=args.heldout, seed=args.seed
        )
        with tempfile.TemporaryDirectory(prefix="sait-recipes-") as tmp:
            labels = Path(tmp) / "train.csv"
            labels.write_text("filename,class_index\n" + "\n".join(train_rows) + "\n")
            read_train_labels(pool, labels)
            base = TrainConfig(
                model=args.model,
                weights=args.weights,
                data_dir=str(pool),
                labels_csv=str(labels),
                out_dir=str(Path(tmp) / "out"),
                epochs=1,
                max_steps=args.steps,
                batch_size=args.batch_size,
                lr=args.lr,
                warmup_steps=args.warmup_steps,
                seed=args.seed,
                device="cpu",
                num_workers=2,
                progress=False,
            )
            cfgs = [(name, replace(base, **overrides)) for name, overrides in recipes]
            data_config = load_model(args.model, args.weights).data_config
            crops = torch.stack([pil_to_uint8(Image.open(path), data_config) for path in held])
            # Before any step the student is the teacher: dense KL 0, the sparsest level's KL as the levels start.
            start = {"recipe": "start (no training)", "train_s": 0.0, "history": []}
            start |= measure(Trainer(cfgs[0][1]), crops)
            results = [start, *(run_recipe(name, cfg, crops) for name, cfg in cfgs)]
    except (ValueError, TrainDataError, WeightsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in results:
        print(json.dumps({k: v for k, v in r.items() if k != "history"}))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.docs:
        block = markdown(results, specs=specs, command=command, base=base, heldout=len(held))
        replace_block(Path(args.docs), block, begin=BEGIN, end=END)
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
