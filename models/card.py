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
    ops: int | None = None  # operators per forward (models.op_count), where the card records them


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
                    ops=None if d.get("ops") is None else int(d["ops"]),
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


# -- speed per device kind, and the levels worth offering there -------------------------------
# A card may hold, under "speed", one table per device kind ("cpu:<CPU model>", "cuda:<GPU
# name>"; models.speed.device_kind) written by `models.make_card --speed`: images/s of every
# level at the batch sizes a server forms. The levels a server offers by default on a device
# are chosen from that table and the accuracy (`choose_levels`).


@dataclass(frozen=True)
class DeviceSpeed:
    """One device kind's measured speed table.

    Args:
        kind: "cpu:<model>" or "cuda:<name>".
        precision: the precision it was measured in.
        images_per_s: level -> batch size -> images/s.
    """

    kind: str
    precision: str
    images_per_s: dict[str, dict[int, float]]

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({b for row in self.images_per_s.values() for b in row}))

    def speedup(self, level: str, batch: int) -> float | None:
        """images/s of `level` over dense's at `batch`, or None where either was not measured."""
        row, dense = self.images_per_s.get(level, {}), self.images_per_s.get("dense", {})
        if batch not in row or not dense.get(batch):
            return None
        return row[batch] / dense[batch]


def device_speeds(card: LevelCard) -> dict[str, DeviceSpeed]:
    """The card's speed tables by device kind (empty when it has none)."""
    out = {}
    for kind, table in (card.source.get("speed") or {}).items():
        try:
            ips = {lv: {int(b): float(v) for b, v in row.items()} for lv, row in table["images_per_s"].items()}
            out[kind] = DeviceSpeed(kind=kind, precision=str(table.get("precision", "")), images_per_s=ips)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed speed table {kind!r} in the level card: {exc}") from exc
    return out


def speed_for(card: LevelCard, kind: str) -> DeviceSpeed | None:
    """The table for `kind`; else the only table of the same device type (another CPU model,
    another GPU: relative speeds carry over better than none); else None."""
    speeds = device_speeds(card)
    if kind in speeds:
        return speeds[kind]
    same_type = [s for k, s in speeds.items() if k.split(":", 1)[0] == kind.split(":", 1)[0]]
    return same_type[0] if len(same_type) == 1 else None


def decisive_batch(speed: DeviceSpeed, max_batch_size: int) -> int:
    """The batch size a choice is made at: the largest measured one the server can form (the
    sparser levels serve under load, in full batches); the smallest measured one if none fits."""
    fitting = [b for b in speed.batch_sizes if b <= max_batch_size]
    return max(fitting) if fitting else min(speed.batch_sizes)


def choose_levels(
    entries: tuple[CardEntry, ...], speed: DeviceSpeed, *, batch: int, min_gain: float = 0.05
) -> tuple[str, ...]:
    """The levels worth offering on a device, densest first; dense always.

    Two rules, both with `min_gain` (a measurement's noise) as the margin, at `batch`:
    1. accuracy and speed: a level is offered only if it is faster than every more accurate
       offered level: a level that saves GFLOPs but is not faster there would only lose accuracy;
    2. speed and density: walking from dense to the sparsest, a level is offered only if it is
       faster than every denser offered level, so that a sparser rung of the controller's ladder
       (and of the density dial) is always a faster one.
    Accuracy is the card's top-1 (else agreement with dense; else the GFLOPs ratio stands in:
    denser counts as more accurate). Levels the table did not measure at `batch` are not offered.
    """

    def accuracy(e: CardEntry) -> float:
        return e.top1 if e.top1 is not None else e.agreement if e.agreement is not None else e.gflops_ratio

    def faster(e: CardEntry, than: float) -> bool:
        return speed.speedup(e.name, batch) > than * (1.0 + min_gain)

    measured = [e for e in entries if speed.speedup(e.name, batch) is not None]
    frontier, fastest = [], 0.0
    # Most accurate first; among equals the faster, then the denser.
    for e in sorted(measured, key=lambda e: (-accuracy(e), -speed.speedup(e.name, batch), -e.gflops_ratio)):
        if e.name == "dense" or faster(e, fastest):
            frontier.append(e)
            fastest = max(fastest, speed.speedup(e.name, batch))
    offered, fastest = [], 0.0
    for e in sorted(frontier, key=lambda e: (-e.gflops_ratio, -accuracy(e))):
        if e.name == "dense" or faster(e, fastest):
            offered.append(e.name)
            fastest = max(fastest, speed.speedup(e.name, batch))
    return tuple(offered)
