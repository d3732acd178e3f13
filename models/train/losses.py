"""Losses of dense/sparse self-distillation (all computed in float32)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.train.data import UNLABELED


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(teacher ‖ student) on temperature-softened predictions, mean over the batch.

    T² keeps the gradient scale independent of T (Hinton et al.).
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


def labelled_ce(
    logits: torch.Tensor, labels: torch.Tensor, *, mix: tuple[torch.Tensor, float] | None = None
) -> torch.Tensor:
    """Cross-entropy over the images that carry a label; 0 when none does.

    Args:
        mix: (partner labels, lam) when the batch was mixed up: the loss is lam·CE(labels) +
            (1-lam)·CE(partner), over images whose label and partner's label both exist.
    """
    logits = logits.float()
    has = labels != UNLABELED
    if mix is not None:
        has = has & (mix[0] != UNLABELED)
    if not bool(has.any()):
        return logits.new_zeros(())
    ce = F.cross_entropy(logits[has], labels[has])
    if mix is not None:
        partner, lam = mix
        ce = lam * ce + (1 - lam) * F.cross_entropy(logits[has], partner[has])
    return ce


def token_kl(student_attn: torch.Tensor, teacher_attn: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) between class-attention distributions over the patches [B,N].

    Both are renormalized over the patches (the class token's attention to itself is dropped
    by the caller), so the term only moves *which* patches the early block ranks high.
    """
    s = student_attn.float()
    t = teacher_attn.float()
    s = s / s.sum(dim=1, keepdim=True).clamp_min(1e-12)
    t = t / t.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return (t * (t.clamp_min(1e-12).log() - s.clamp_min(1e-12).log())).sum(dim=1).mean()
