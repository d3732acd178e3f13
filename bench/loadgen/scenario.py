"""Scenario files: which per-request dials the generated requests carry, and in what mix.

A scenario is a weighted mix of request classes. Each class fixes the dials a request sends
(density, latency budget, accuracy floor, top-k; any may be absent = "let the server decide").
Files are TOML or JSON:

    name = "mixed"
    default_budget_ms = 1000      # deadline used to judge requests that send no budget
    [[classes]]
    name = "interactive"
    weight = 3
    latency_budget_ms = 150
    [[classes]]
    name = "archive"
    weight = 1
    density = 0.6
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Matches the server's SAIT_DEFAULT_BUDGET_MS default (docs/contract.md).
DEFAULT_BUDGET_MS = 1000.0


class ScenarioError(ValueError):
    """A scenario file that cannot be read or makes no sense (one readable line)."""


@dataclass(frozen=True)
class Dials:
    """The per-request dials one request class sends.

    Args:
        name: class name, reported per class.
        density: requested density (a ratio such as 0.6, or a level name); None = not sent.
        latency_budget_ms: latency budget; None = not sent (the server uses its default).
        min_accuracy: accuracy floor (top-1 fraction); None = not sent.
        top_k: number of classes to return; None = not sent.
    """

    name: str = "default"
    density: float | str | None = None
    latency_budget_ms: float | None = None
    min_accuracy: float | None = None
    top_k: int | None = None

    def query(self) -> dict[str, str]:
        """The dials as query parameters / request parameters, absent ones left out."""
        params = {
            "density": self.density,
            "latency_budget_ms": self.latency_budget_ms,
            "min_accuracy": self.min_accuracy,
            "top_k": self.top_k,
        }
        return {k: _fmt(v) for k, v in params.items() if v is not None}


def _fmt(value: float | int | str) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class WeightedDials:
    dials: Dials
    weight: float


@dataclass(frozen=True)
class Scenario:
    """A weighted mix of request classes.

    Args:
        name: scenario name (reports and file names).
        classes: the request classes with their weights (> 0).
        default_budget_ms: the deadline used to judge a request that sends no budget.
        profile: optional rate profile ("20@60"), used when the command line gives none.
        process: optional arrival process ("poisson"/"constant"), same.
    """

    name: str
    classes: tuple[WeightedDials, ...]
    default_budget_ms: float = DEFAULT_BUDGET_MS
    profile: str | None = None
    process: str | None = None

    def __post_init__(self) -> None:
        if not self.classes:
            raise ScenarioError(f"scenario {self.name!r} has no classes")
        if any(not (c.weight > 0 and math.isfinite(c.weight)) for c in self.classes):
            raise ScenarioError(f"scenario {self.name!r}: every class weight must be > 0")
        names = [c.dials.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ScenarioError(f"scenario {self.name!r}: class names must be unique, got {names}")

    @classmethod
    def single(cls, dials: Dials, *, default_budget_ms: float = DEFAULT_BUDGET_MS) -> Scenario:
        return cls(name=dials.name, classes=(WeightedDials(dials, 1.0),), default_budget_ms=default_budget_ms)

    def budget_ms(self, dials: Dials) -> float:
        """The deadline a request of this class is judged against."""
        return dials.latency_budget_ms if dials.latency_budget_ms is not None else self.default_budget_ms

    def assign(self, n: int, *, seed: int = 0) -> list[Dials]:
        """Draw the class of each of n requests (seeded, so runs are reproducible)."""
        weights = np.array([c.weight for c in self.classes], dtype=np.float64)
        picks = np.random.default_rng(seed + 1).choice(len(self.classes), size=n, p=weights / weights.sum())
        return [self.classes[i].dials for i in picks]


_SCENARIO_KEYS = {"name", "classes", "default_budget_ms", "profile", "process"}
_CLASS_KEYS = {"name", "weight", "density", "latency_budget_ms", "min_accuracy", "top_k"}


def _positive(value: object, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ScenarioError(f"{where}: {key} must be a number > 0, got {value!r}")
    return float(value)


def _parse_class(raw: object, index: int, scenario: str) -> WeightedDials:
    where = f"scenario {scenario!r} class #{index + 1}"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: expected a table/object, got {type(raw).__name__}")
    unknown = set(raw) - _CLASS_KEYS
    if unknown:
        raise ScenarioError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_CLASS_KEYS)}")
    density = raw.get("density")
    if density is not None and not isinstance(density, str):
        density = _positive(density, "density", where)
        if density > 1:
            raise ScenarioError(f"{where}: density is a fraction of dense (<= 1), got {density}")
    budget = raw.get("latency_budget_ms")
    floor = raw.get("min_accuracy")
    if floor is not None:
        floor = _positive(floor, "min_accuracy", where)
        if floor > 1:
            raise ScenarioError(f"{where}: min_accuracy is a fraction (<= 1), got {floor}")
    top_k = raw.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ScenarioError(f"{where}: top_k must be an integer >= 1, got {top_k!r}")
    dials = Dials(
        name=str(raw.get("name", f"class{index + 1}")),
        density=density,
        latency_budget_ms=None if budget is None else _positive(budget, "latency_budget_ms", where),
        min_accuracy=floor,
        top_k=top_k,
    )
    return WeightedDials(dials, _positive(raw.get("weight", 1.0), "weight", where))


def parse_scenario(data: dict, *, name: str = "scenario") -> Scenario:
    """Build a Scenario from the parsed TOML/JSON document."""
    if not isinstance(data, dict):
        raise ScenarioError(f"scenario {name!r}: the document must be a table/object")
    name = str(data.get("name", name))
    raw_classes = data.get("classes")
    if not isinstance(raw_classes, list) or not raw_classes:
        raise ScenarioError(f"scenario {name!r}: needs a non-empty 'classes' list")
    default_budget = _positive(
        data.get("default_budget_ms", DEFAULT_BUDGET_MS), "default_budget_ms", f"scenario {name!r}"
    )
    classes = tuple(_parse_class(c, i, name) for i, c in enumerate(raw_classes))
    unknown = set(data) - _SCENARIO_KEYS
    if unknown:
        raise ScenarioError(f"scenario {name!r}: unknown keys {sorted(unknown)}; known: {sorted(_SCENARIO_KEYS)}")
    profile, process = data.get("profile"), data.get("process")
    return Scenario(
        name=name,
        classes=classes,
        default_budget_ms=default_budget,
        profile=None if profile is None else str(profile),
        process=None if process is None else str(process),
    )


def load_scenario(path: str | Path) -> Scenario:
    """Read a .toml or .json scenario file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"scenario {path} is not valid {path.suffix.lstrip('.') or 'TOML'}: {exc}") from None
    return parse_scenario(data, name=path.stem)
