"""The level card: each level's measured accuracy, agreement with dense, and GFLOPs.

Made by `python -m models.make_card` (or from `python -m models.evaluate --json` runs) and
read by the service for the accuracy dial (`min_accuracy`). A card is true of one weights
file: it records that file's sha256 (`weights_sha256`, models.fingerprint), and lives beside
the file (`<weights>.card.json`) or under models/cards/, where the service finds it by hash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CARDS_DIR = Path(__file__).parent / "cards"
# A card beside its weights file: `model.safetensors` -> `model.safetensors.card.json`.
CARD_SUFFIX = ".card.json"


@dataclass(frozen=True)
class CardEntry:
    name: str
    reducer: str
    gflops: float
    gflops_ratio: float
    top1: float | None
    top5: float | None
    agreement: float | None
    images_per_s: float | None


@dataclass(frozen=True)
class LevelCard:
    """Measured table for one model; `levels` densest first."""

    model: str
    levels: tuple[CardEntry, ...]
    source: dict

    @classmethod
    def from_dict(cls, data: dict) -> LevelCard:
        try:
            entries = tuple(
                CardEntry(
                    name=str(d["name"]),
                    reducer=str(d.get("reducer", "none")),
                    gflops=float(d["gflops"]),
                    gflops_ratio=float(d["gflops_ratio"]),
                    top1=_opt_float(d.get("top1")),
                    top5=_opt_float(d.get("top5")),
                    agreement=_opt_float(d.get("agreement")),
                    images_per_s=_opt_float(d.get("images_per_s")),
                )
                for d in data["levels"]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed level card: {exc}") from exc
        entries = tuple(sorted(entries, key=lambda e: -e.gflops_ratio))
        return cls(
            model=str(data.get("model", "")), levels=entries, source={k: v for k, v in data.items() if k != "levels"}
        )

    @classmethod
    def load(cls, path: str | Path) -> LevelCard:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"level card not found: {p}")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"level card {p} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def for_model(cls, model: str) -> LevelCard:
        return cls.load(CARDS_DIR / f"{model}.json")

    @classmethod
    def for_weights(cls, model: str, sha256: str, cards_dir: str | Path | None = None) -> tuple[LevelCard, Path] | None:
        """The card under `cards_dir` (default models/cards/) measured with these weights (by sha256), and its path."""
        for path in sorted(Path(cards_dir or CARDS_DIR).glob("*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(data, dict) and data.get("model") == model and data.get("weights_sha256") == sha256:
                return cls.from_dict(data), path
        return None

    @property
    def weights_sha256(self) -> str | None:
        """sha256 of the weights file the card was measured with (None on a card that names none)."""
        value = self.source.get("weights_sha256")
        return str(value) if value else None

    def entry(self, name: str) -> CardEntry:
        for e in self.levels:
            if e.name == name:
                return e
        raise KeyError(f"level {name!r} not on the card for {self.model}")


def card_beside(weights: str | Path) -> Path:
    """Where the card of a weights file lives beside it."""
    p = Path(weights)
    return p.with_name(p.name + CARD_SUFFIX)


def _opt_float(v) -> float | None:
    return None if v is None else float(v)
