"""Request dial parameters, validated the same way for both APIs (query string or v2 parameters)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from service.controller import parse_density
from service.errors import BadRequest

MAX_BUDGET_MS = 3_600_000.0  # one hour: anything longer is a unit mistake
MAX_TOP_K = 1000


@dataclass(frozen=True)
class DialParams:
    """The dial of one request, validated; None where the client gave nothing."""

    density: str | float | None = None
    latency_budget_ms: float | None = None
    min_accuracy: float | None = None
    top_k: int = 5
    priority: int = 0


def _number(name: str, value: object) -> float:
    if isinstance(value, bool):
        raise BadRequest(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise BadRequest(f"{name} must be finite, got {value!r}")
    return number


def _integer(name: str, value: object) -> int:
    number = _number(name, value)
    if number != int(number):
        raise BadRequest(f"{name} must be an integer, got {value!r}")
    return int(number)


def parse_dial(
    *,
    density: object = None,
    latency_budget_ms: object = None,
    min_accuracy: object = None,
    top_k: object = None,
    priority: object = None,
    timeout_us: object = None,
    num_classes: int = 1000,
) -> DialParams:
    """Validate raw values (strings from a query, or JSON scalars). Raises BadRequest.

    Triton's `timeout` (microseconds) is a budget when `latency_budget_ms` is absent.
    """
    parsed_density = None
    if density is not None:
        if isinstance(density, bool) or not isinstance(density, (str, int, float)):
            raise BadRequest(f"density must be a level name or a number in (0, 1], got {density!r}")
        parsed_density = parse_density(density)
    budget = None
    if latency_budget_ms is not None:
        budget = _number("latency_budget_ms", latency_budget_ms)
        if not 0 < budget <= MAX_BUDGET_MS:
            raise BadRequest(f"latency_budget_ms {budget:g} is out of range: give a number in (0, {MAX_BUDGET_MS:g}]")
    elif timeout_us is not None:
        timeout = _integer("timeout", timeout_us)
        if timeout < 0:
            raise BadRequest(f"timeout must be >= 0 microseconds, got {timeout}")
        budget = timeout / 1e3 if timeout > 0 else None  # Triton: 0 means no timeout
    floor = None
    if min_accuracy is not None:
        floor = _number("min_accuracy", min_accuracy)
        if not 0 < floor <= 1:
            raise BadRequest(f"min_accuracy {floor:g} is out of range: give a fraction in (0, 1]")
    k = 5
    if top_k is not None:
        k = _integer("top_k", top_k)
        if not 1 <= k <= min(MAX_TOP_K, num_classes):
            raise BadRequest(f"top_k {k} is out of range: give 1..{min(MAX_TOP_K, num_classes)}")
    prio = 0
    if priority is not None:
        prio = _integer("priority", priority)
        if prio < 0:
            raise BadRequest(f"priority must be >= 0 (1 is the highest, 0 the default), got {prio}")
    return DialParams(density=parsed_density, latency_budget_ms=budget, min_accuracy=floor, top_k=k, priority=prio)
