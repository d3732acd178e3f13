"""The level card: each level's measured accuracy, agreement with dense, and GFLOPs.

Written by `python -m models.evaluate --json`, committed under models/cards/<model>.json, and
read by the service for the accuracy dial (`min_accuracy`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CARDS_DIR = Path(__file__).parent / "cards"


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

    def entry(self, name: str) -> CardEntry:
        for e in self.levels:
            if e.name == name:
                return e
        raise KeyError(f"level {name!r} not on the card for {self.model}")


def _opt_float(v) -> float | None:
    return None if v is None else float(v)
