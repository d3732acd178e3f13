"""The level card as the engine reads it: which card serves, and what it says per level.

The card (models.card) holds each level's measured accuracy and agreement with dense; the
controller's `min_accuracy` dial and every response's level facts come from it. A card is true
of the weights it was measured with only, so the engine serves the card of the weights it
serves: `SAIT_LEVEL_CARD`, else `<weights>.card.json` beside the weights file, else the card
under models/cards/ with the weights' sha256. A card made for other weights stops the start
(one line, exit 2); `SAIT_LEVEL_CARD=none` serves without accuracy figures, and so does a
server that finds no card (then `min_accuracy` is refused with 400).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from models.card import CardEntry, LevelCard, card_beside, choose_levels, decisive_batch, speed_for
from models.fingerprint import Fingerprint, weights_fingerprint
from models.speed import device_kind
from models.weights import WeightsError
from service.settings import Settings

# SAIT_LEVEL_CARD=none: serve without accuracy figures.
NO_CARD = "none"

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
    """The card for the served weights, or None (no card, or SAIT_LEVEL_CARD=none); CardError when unusable."""
    if settings.level_card and settings.level_card.strip().lower() == NO_CARD:
        log.info("SAIT_LEVEL_CARD=none: serving without accuracy figures (min_accuracy requests are refused)")
        return None
    try:
        served = weights_fingerprint(settings.model, settings.weights)
    except WeightsError as exc:
        # Pretrained weights timm fetched from elsewhere than the Hugging Face cache: no file to hash.
        if settings.level_card:
            raise CardError(f"cannot check SAIT_LEVEL_CARD against the served weights: {exc}") from None
        log.warning("serving without a level card: cannot identify the served weights (%s)", exc)
        return None
    path, card = _find_card(settings, served)
    if card is None:
        log.warning(
            "no level card for %s (weights %s): min_accuracy requests will be refused; make one with "
            "`make card WEIGHTS=...` (python -m models.make_card) or set SAIT_LEVEL_CARD",
            settings.model,
            _describe(served),
        )
        return None
    _check_card(card, path, settings.model, served)
    log.info("level card %s (weights sha256 %s)", path, (card.weights_sha256 or "not recorded")[:12])
    return card


def _find_card(settings: Settings, served: Fingerprint | None) -> tuple[Path | None, LevelCard | None]:
    if settings.level_card:
        path = Path(settings.level_card)
        try:
            return path, LevelCard.load(path)
        except (OSError, ValueError) as exc:
            raise CardError(f"invalid setting SAIT_LEVEL_CARD: {exc}") from None
    if settings.weights:
        beside = card_beside(settings.weights)
        if beside.is_file():
            try:
                return beside, LevelCard.load(beside)
            except (OSError, ValueError) as exc:
                raise CardError(f"unusable level card beside the weights: {exc}") from None
    if served is not None:
        found = LevelCard.for_weights(settings.model, served.sha256)
        if found is not None:
            card, path = found
            return path, card
    return None, None


def _check_card(card: LevelCard, path: Path | None, model: str, served: Fingerprint | None) -> None:
    """CardError unless `card` was measured with this model and these very weights."""
    if card.model and card.model != model:
        raise CardError(
            f"level card {path} is for model {card.model}, not the served {model}: name the served model's card "
            f"or serve without accuracy figures (SAIT_LEVEL_CARD=none)"
        )
    made_for = card.weights_sha256
    if served is None:
        if made_for:
            raise CardError(
                f"level card {path} was measured with weights sha256 {made_for[:12]}…, but {model} runs with "
                f"random weights; serve those weights, or set SAIT_LEVEL_CARD=none"
            )
        return
    if made_for != served.sha256:
        measured = f"with weights sha256 {made_for[:12]}…" if made_for else "without naming its weights"
        raise CardError(
            f"level card {path} was measured {measured}, but the served weights are {_describe(served)}: "
            f"make their card (make card WEIGHTS={served.path}) or serve without accuracy figures "
            f"(SAIT_LEVEL_CARD=none)"
        )


def _describe(served: Fingerprint | None) -> str:
    if served is None:
        return "random (no file)"
    return f"{served.path} (sha256 {served.sha256[:12]}…)"


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
