"""`python -m models.train`: fine-tune one model for every density level (see docs/training.md)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from models.train.config import TrainConfig


def _parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m models.train", description=__doc__)
    p.add_argument("--model", default=d.model, help="timm model name (default %(default)s)")
    p.add_argument("--weights", default=None, help="starting weights .safetensors/.pth (default: pretrained)")
    p.add_argument("--data-dir", default=d.data_dir, help="training images (default %(default)s)")
    p.add_argument("--labels-csv", default=None, help="filename,class_index CSV (default DATA_DIR/labels.csv)")
    p.add_argument("--out-dir", default=d.out_dir, help="checkpoints, weights, curves (default %(default)s)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--max-steps", type=int, default=None, help="schedule length in steps (overrides --epochs)")
    p.add_argument("--stop-after", type=int, default=None, help="stop with a checkpoint after this step")
    p.add_argument("--max-minutes", type=float, default=None, help="stop with a checkpoint after this wall time")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--min-lr", type=float, default=d.min_lr)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--clip-grad", type=float, default=d.clip_grad)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--dense-kd-weight", type=float, default=d.dense_kd_weight, help="weight of the dense level's KL")
    p.add_argument(
        "--dense-ce",
        action=argparse.BooleanOptionalAction,
        default=d.dense_ce,
        help="cross-entropy on the dense level too (default %(default)s)",
    )
    p.add_argument(
        "--sparse-target", default=d.sparse_target, choices=("teacher", "dense"), help="what sparse levels distil"
    )
    p.add_argument(
        "--freeze-blocks",
        type=int,
        default=d.freeze_blocks,
        help="keep the embedding and the first N blocks as they start (default %(default)s)",
    )
    p.add_argument("--ce-weight", type=float, default=d.ce_weight)
    p.add_argument("--token-weight", type=float, default=d.token_weight, help="0 turns the token-score term off")
    p.add_argument("--teacher-attn-block", type=int, default=d.teacher_attn_block)
    p.add_argument("--levels", default=None, help="comma list of levels to train (default: all)")
    p.add_argument("--random-levels", type=int, default=d.random_levels)
    p.add_argument(
        "--data",
        default=d.data,
        choices=("memory", "loader"),
        help="memory: pool decoded once, augmented on the device; loader: PIL per image (default %(default)s)",
    )
    p.add_argument("--pool-size", type=int, default=d.pool_size, help="side of the stored images (memory path)")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no augmentation")
    p.add_argument("--rotate-deg", type=float, default=d.rotate_deg, help="largest rotation (memory path)")
    p.add_argument("--color-jitter", type=float, default=d.color_jitter, help="colour-jitter strength (memory path)")
    p.add_argument("--auto-augment", default=d.auto_augment, help="timm auto-augment spec ('' for none)")
    p.add_argument("--crop-scale-min", type=float, default=d.crop_scale_min)
    p.add_argument("--mixup-alpha", type=float, default=d.mixup_alpha)
    p.add_argument("--num-workers", type=int, default=d.num_workers)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"))
    p.add_argument("--save-every", type=int, default=d.save_every)
    p.add_argument("--export-dtype", default=d.export_dtype, choices=("fp16", "fp32"))
    p.add_argument(
        "--eval-sets",
        nargs="+",
        default=None,
        help="labelled folders: measure every level of the exported weights there and write their card beside them",
    )
    p.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoint")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    args = vars(_parser().parse_args(argv))
    if args["levels"]:
        args["levels"] = tuple(n.strip() for n in args["levels"].split(",") if n.strip())
    if args["eval_sets"]:
        args["eval_sets"] = tuple(args["eval_sets"])
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in args.items() if k in known})


def main(argv: list[str] | None = None) -> int:
    import shlex

    from models import WeightsError
    from models.device import DeviceUnavailable
    from models.evalset import EvalSetError
    from models.train.data import TrainDataError
    from models.train.loop import train

    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = config_from_args(argv)
        summary = train(cfg, command="python -m models.train " + shlex.join(argv))
    except (ValueError, KeyError, WeightsError, TrainDataError, EvalSetError, DeviceUnavailable) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {k: v for k, v in summary.items() if k != "last"} | {"last_loss": (summary["last"] or {}).get("loss")}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
