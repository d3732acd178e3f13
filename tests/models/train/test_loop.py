"""The training loop on a tiny random ViT: finite losses, dense KL starts at 0, exact resume."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from models import load_model
from models.train import TrainConfig, train
from models.train.__main__ import main
from models.train.loop import Trainer, create_scheduler, ordered_levels, sample_levels

# The sandwich rule trains dense and the sparsest level every step; which level that is
# follows the model's schedules (at 0.4x the few-point f040 is a little lighter than l040).
SPARSEST = ordered_levels(load_model("vit_tiny_test"), None)[-1]


@pytest.fixture(scope="module")
def straight(make_cfg, tmp_path_factory):
    """Four uninterrupted steps, shared by the tests below (the loop is the slow part)."""
    out = tmp_path_factory.mktemp("straight")
    return out, train(make_cfg(out))


def _history(out) -> list[dict]:
    return json.loads((out / "checkpoint" / "trainer.json").read_text())["history"]


def test_loop_losses_finite_dense_starts_equal_to_teacher(straight):
    out, summary = straight
    assert summary["step"] == 4 and summary["finished"]
    history = _history(out)
    assert all(np.isfinite(h["loss"]) and np.isfinite(h["grad_norm"]) for h in history)
    # Student and teacher are the same weights at step 0 (mixup changes the input of both alike).
    assert history[0]["kd"]["dense"] < 1e-5
    assert history[0]["kd"][SPARSEST] > 1e-4  # the sparsest level differs from its teacher
    assert all(h["levels"][0] == "dense" and h["levels"][-1] == SPARSEST and len(h["levels"]) == 3 for h in history)
    assert (out / "loss_curves.png").stat().st_size > 1000
    model = load_model("vit_tiny_test", weights=summary["weights"])  # exported weights load back
    assert set(model.levels) >= {"dense", SPARSEST}


def test_fixed_batch_loss_decreases(make_cfg, tmp_path):
    """On one fixed batch (no augmentation) the loss falls: the optimizer is wired up.

    The random tiny model starts near the teacher (KL ~1e-4), so the labelled cross-entropy
    (~6.9 nats) is the part with room to fall.
    """
    cfg = make_cfg(
        tmp_path / "fit",
        batch_size=6,
        max_steps=5,
        augment=False,
        mixup_alpha=0.0,
        token_weight=0.0,
        ce_weight=1.0,
        lr=1e-3,
        random_levels=0,
    )
    train(cfg)
    history = _history(tmp_path / "fit")
    assert [h["levels"] for h in history] == [["dense", SPARSEST]] * 5
    assert history[-1]["loss"] < history[0]["loss"] - 0.1
    assert all(np.isfinite(h["kd"][SPARSEST]) for h in history)


def test_resume_reproduces_the_uninterrupted_run_exactly(pool, make_cfg, tmp_path, straight):
    train(make_cfg(tmp_path / "split", stop_after=2))
    half = load_file(str(tmp_path / "split" / "checkpoint" / "model.safetensors"))
    assert (
        main(
            [
                "--model",
                "vit_tiny_test",
                "--data-dir",
                str(pool),
                "--out-dir",
                str(tmp_path / "split"),
                "--batch-size",
                "3",
                "--max-steps",
                "4",
                "--warmup-steps",
                "1",
                "--lr",
                "1e-3",
                "--num-workers",
                "0",
                "--save-every",
                "100",
                "--export-dtype",
                "fp32",
                "--no-progress",
                "--device",
                "cpu",
                "--token-weight",
                "0.5",
                "--freeze-blocks",
                "0",
                "--mixup-alpha",
                "0.4",
                "--resume",
            ]
        )
        == 0
    )
    a = load_file(str(straight[0] / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "checkpoint" / "model.safetensors"))
    assert any(not torch.equal(half[k], b[k]) for k in a)  # the resumed half did train
    for k in a:
        assert torch.equal(a[k], b[k]), k
    oa = load_file(str(straight[0] / "checkpoint" / "optimizer.safetensors"))
    ob = load_file(str(tmp_path / "split" / "checkpoint" / "optimizer.safetensors"))
    assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa)


def _lr(scheduler, step: int) -> float:
    scheduler.step_update(step)
    return scheduler.optimizer.param_groups[0]["lr"]


def _scheduler(cfg: TrainConfig, total_steps: int):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    return create_scheduler(optimizer, cfg, total_steps)


def test_schedule_warms_up_then_decays_along_a_cosine_and_keeps_no_state():
    cfg = TrainConfig(lr=1e-3, min_lr=0.0, warmup_steps=10)
    sched = _scheduler(cfg, 100)
    assert _lr(sched, 0) == pytest.approx(0.0)  # warm-up starts at min_lr
    assert _lr(sched, 5) == pytest.approx(5e-4)
    assert _lr(sched, 10) == pytest.approx(1e-3)
    assert _lr(sched, 55) == pytest.approx(5e-4)  # half-way through the cosine
    assert _lr(sched, 100) == pytest.approx(0.0)
    assert _lr(_scheduler(TrainConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10), 100), 0) == pytest.approx(1e-5)
    # The rate is a function of the step: a fresh scheduler (a resumed run's) agrees, state and all.
    fresh = _scheduler(cfg, 100)
    assert _lr(fresh, 37) == _lr(sched, 37) and fresh.state_dict() == sched.state_dict()


def test_level_sampling():
    levels = ["dense", "l090", "l080", "l070", "l060", "l050"]
    got = sample_levels(levels, k=2, rng=random.Random(0))
    assert got[0] == "dense" and got[-1] == "l050" and len(set(got)) == 4


def test_no_weight_decay_on_norms_biases_position_embedding_and_class_token(make_cfg, tmp_path):
    trainer = Trainer(make_cfg(tmp_path / "groups", freeze_blocks=0))  # every parameter trained
    names = {id(p): n for n, p in trainer.student.timm_model.named_parameters()}
    by_decay = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in trainer.optimizer.param_groups}
    assert set(by_decay) == {0.0, 0.05} and sum(map(len, by_decay.values())) == len(names)
    assert {"cls_token", "pos_embed", "norm.weight", "blocks.0.norm1.bias", "blocks.0.attn.qkv.bias"} <= by_decay[0.0]
    assert all(n.endswith(".weight") and "norm" not in n for n in by_decay[0.05])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_two_steps_on_cuda_in_bf16(make_cfg, tmp_path):
    summary = train(make_cfg(tmp_path / "gpu", device="cuda", max_steps=2))
    assert summary["finished"] and np.isfinite(summary["last"]["loss"])
    assert summary["last"]["kd"]["dense"] < 0.05  # bf16 student still close to its fp32 teacher


def _perturbed_trainer(make_cfg, out, **kw) -> Trainer:
    """A trainer whose student's dense output no longer equals the teacher's (its head bias moved)."""
    trainer = Trainer(make_cfg(out, random_levels=0, mixup_alpha=0.0, **kw))
    with torch.no_grad():
        trainer.student.timm_model.head.bias.add_(torch.linspace(-2, 2, 1000))
    return trainer


def _one_batch(trainer: Trainer):
    return next(iter(trainer.batches(0, 0)))


@pytest.mark.parametrize("dense_kd_weight, dense_ce", [(0.0, False), (3.0, False), (1.0, True)])
def test_the_dense_levels_loss_is_its_weighted_kl_and_ce_only_when_asked(make_cfg, tmp_path, dense_kd_weight, dense_ce):
    trainer = _perturbed_trainer(
        make_cfg, tmp_path / "w", dense_kd_weight=dense_kd_weight, dense_ce=dense_ce, token_weight=0.0, ce_weight=5.0
    )
    record = trainer.train_step(*_one_batch(trainer))
    kd, ce = record["kd"], record["ce_by_level"]
    assert record["levels"] == ["dense", SPARSEST] and kd["dense"] > 0.01 and ce["dense"] > 0.1
    dense_loss = dense_kd_weight * kd["dense"] + (5.0 * ce["dense"] if dense_ce else 0.0)
    assert record["loss"] == pytest.approx((dense_loss + kd[SPARSEST] + 5.0 * ce[SPARSEST]) / 2, rel=1e-5)


def test_sparse_levels_can_distil_the_students_own_dense_output(make_cfg, tmp_path):
    from models.train.losses import distill_kl

    kds = {}
    for target in ("teacher", "dense"):
        trainer = _perturbed_trainer(make_cfg, tmp_path / target, sparse_target=target, token_weight=0.0)
        x, labels = _one_batch(trainer)
        with torch.no_grad():
            student_dense = trainer.student(x, level="dense")
            sparsest = trainer.student(x, level=SPARSEST)
            teacher = trainer.teacher(x, level="dense")
        kds[target] = trainer.train_step(x, labels)["kd"][SPARSEST]
        reference = {"teacher": teacher, "dense": student_dense}[target]
        assert kds[target] == pytest.approx(distill_kl(sparsest, reference, 1.0).item(), rel=1e-4)
    assert kds["teacher"] != pytest.approx(kds["dense"], rel=1e-3)


def test_the_loader_path_still_trains(make_cfg, tmp_path):
    summary = train(make_cfg(tmp_path / "loader", data="loader", max_steps=2))
    assert summary["finished"] and np.isfinite(summary["last"]["loss"])
    assert _history(tmp_path / "loader")[0]["kd"]["dense"] < 1e-5


def test_one_command_trains_exports_and_writes_the_card_of_the_exported_file(pool, tmp_path, capsys):
    """What the GPU run does in one go, on the tiny model: train, export, measure every level, card."""
    from models.card import LevelCard, card_beside
    from models.fingerprint import file_sha256
    from service.engine.cards import load_card
    from service.settings import Settings

    sets = []
    for name, n in (("set-a", 3), ("set-b", 2)):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(n):
            Image.fromarray(np.full((40, 50, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / "labels.csv").write_text("filename,class_index\n" + "".join(f"{i}.png,{i}\n" for i in range(n)))
        sets.append(str(folder))
    out = tmp_path / "run"
    argv = ["--model", "vit_tiny_test", "--data-dir", str(pool), "--out-dir", str(out), "--batch-size", "3"]
    argv += ["--max-steps", "3", "--warmup-steps", "1", "--num-workers", "2", "--no-progress", "--device", "cpu"]
    assert main([*argv, "--eval-sets", *sets, "--eval-batch-size", "4"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    weights = out / "model.safetensors"
    assert summary["card"] == str(card_beside(weights)) and summary["train_s"] <= summary["wall_s"]
    card = LevelCard.load(card_beside(weights))
    assert card.weights_sha256 == file_sha256(weights) and card.source["images"] == 5
    assert set(card.source["datasets"]) == {"set-a", "set-b"}
    assert card.source["commands"][0].startswith("python -m models.train --model vit_tiny_test")
    assert [e.name for e in card.levels] == list(load_model("vit_tiny_test").levels)
    served = load_card(Settings(model="vit_tiny_test", weights=str(weights), device="cpu"))
    assert served is not None and served.weights_sha256 == card.weights_sha256


def test_missing_eval_sets_fail_before_training(pool, tmp_path, capsys):
    argv = ["--model", "vit_tiny_test", "--data-dir", str(pool), "--out-dir", str(tmp_path / "x"), "--no-progress"]
    assert main([*argv, "--eval-sets", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert "images folder not found" in err and "\n" not in err
    assert not (tmp_path / "x" / "checkpoint").exists()


def test_a_frozen_prefix_keeps_its_start_and_leaves_the_optimizer(make_cfg, tmp_path):
    trainer = _perturbed_trainer(make_cfg, tmp_path / "f", freeze_blocks=2, token_weight=0.0)
    vit = trainer.student.timm_model
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    trainer.train_step(*_one_batch(trainer))
    after = vit.state_dict()
    frozen = [k for k in before if k.startswith(("patch_embed.", "pos_embed", "cls_token", "blocks.0.", "blocks.1."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["blocks.2.attn.qkv.weight"], after["blocks.2.attn.qkv.weight"])
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    named = dict(vit.named_parameters())
    assert not any(id(named[k]) in in_optimizer for k in frozen if k in named)
    assert id(named["blocks.2.attn.qkv.weight"]) in in_optimizer


def test_freezing_more_blocks_than_the_model_has_is_refused(make_cfg, tmp_path):
    with pytest.raises(ValueError, match="freeze_blocks=7, but the model has 6 blocks"):
        Trainer(make_cfg(tmp_path / "x", freeze_blocks=7))


def test_a_frozen_probe_block_makes_the_token_term_inert_and_it_is_skipped_with_a_warning(make_cfg, tmp_path):
    with pytest.warns(UserWarning, match="token_weight=0.5 is inert"):
        trainer = Trainer(make_cfg(tmp_path / "inert", freeze_blocks=2))
    assert not trainer.use_tokens and trainer.train_step(*_one_batch(trainer))["token"] == 0.0
    assert Trainer(make_cfg(tmp_path / "live")).use_tokens  # nothing frozen: the term trains block 0
