"""The level card as the engine reads it: which card serves, and what it says per level.

The card (models.card) holds each level's measured accuracy and agreement with dense; the
controller's `min_accuracy` dial and every response's level facts come from it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from models.card import CardEntry, LevelCard, choose_levels, decisive_batch, speed_for
from models.speed import device_kind
from service.settings import Settings

log = logging.getLogger(__name__)


class CardError(RuntimeError):
    """The configured level card cannot be used; the message is one line."""


@dataclass(frozen=True)
class LevelFacts:
    """What a response says about the level that ran: its cost, and the card's figures."""

    gflops: float
    gflops_ratio: float
    top1: float | None = None
    agreement: float | None = None

    def as_dict(self) -> dict:
        return {
            "gflops": self.gflops,
            "gflops_ratio": self.gflops_ratio,
            "top1": self.top1,
            "agreement": self.agreement,
        }


def load_card(settings: Settings) -> LevelCard | None:
    """SAIT_LEVEL_CARD when given (must load), else the packaged card if there is one."""
    if settings.level_card:
        try:
            return LevelCard.load(settings.level_card)
        except (OSError, ValueError) as exc:
            raise CardError(f"invalid setting SAIT_LEVEL_CARD: {exc}") from None
    try:
        card = LevelCard.for_model(settings.model)
    except FileNotFoundError:
        log.info("no level card for %s: min_accuracy requests will be refused (set SAIT_LEVEL_CARD)", settings.model)
        return None
    except ValueError as exc:
        log.warning("packaged level card for %s is unusable (%s); serving without one", settings.model, exc)
        return None
    return card


def card_entry(card: LevelCard | None, name: str) -> CardEntry | None:
    if card is None:
        return None
    try:
        return card.entry(name)
    except KeyError:
        return None


def card_accuracy(entry: CardEntry | None) -> float | None:
    """The accuracy the `min_accuracy` dial compares: top-1, else agreement with dense; as a fraction."""
    if entry is None:
        return None
    value = entry.top1 if entry.top1 is not None else entry.agreement
    if value is None:
        return None
    return value / 100.0 if value > 1.0 else value


def level_facts(level, card: LevelCard | None) -> LevelFacts:
    """`level` (a models.Level) with the card's top-1 and agreement where the card has them."""
    entry = card_entry(card, level.name)
    return LevelFacts(
        gflops=round(level.gflops, 4),
        gflops_ratio=round(level.gflops_ratio, 4),
        top1=None if entry is None else entry.top1,
        agreement=None if entry is None else entry.agreement,
    )


def requested_levels(settings: Settings, model, card: LevelCard | None, device: torch.device) -> tuple[str, ...] | None:
    """The level names SAIT_LEVELS asks for (None: every level of the model).

    'auto' asks the card: the levels `models.card.choose_levels` offers on this device kind
    (accuracy and measured speed, at the largest measured batch the server forms), or every
    level when the card has no speed table for this kind of device.
    """
    if settings.levels != "auto":
        return settings.level_names
    kind = device_kind(device)
    speed = None if card is None else speed_for(card, kind)
    if speed is None:
        log.info("SAIT_LEVELS=auto: no speed table for %s in the level card; serving every level", kind)
        return None
    batch = decisive_batch(speed, settings.max_batch_size)
    names = choose_levels(tuple(e for e in card.levels if e.name in model.levels), speed, batch=batch)
    log.info(
        "SAIT_LEVELS=auto on %s: %s (speed table %s, batch %d, chosen from accuracy and speed)",
        kind,
        ",".join(names),
        speed.kind,
        batch,
    )
    return names
