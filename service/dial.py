"""The dial of one request: what it asks of the accuracy/latency trade-off.

One `Dial` type, built once per request by the front end (`parse_dial`, from a query string
or v2 parameters) and read by the controller. `parse_density` is the one density validator:
the requests' `density` and the `fixed:<density>` policy setting both go through it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from service.errors import BadRequest

MAX_BUDGET_MS = 3_600_000.0  # one hour: anything longer is a unit mistake
MAX_TOP_K = 1000
DEFAULT_TOP_K = 5

# The dial's fields as clients name them (query parameters of /v1/classify, v2 parameters),
# with what they mean: the OpenAPI page and the parsers read this one table.
DIAL_FIELDS: dict[str, str] = {
    "density": "level name (dense, l070, ...) or a number in (0, 1]: pins the level",
    "latency_budget_ms": "end-to-end budget in ms (default SAIT_DEFAULT_BUDGET_MS)",
    "min_accuracy": "accuracy floor in (0, 1], via the level card",
    "top_k": f"classes to return (default {DEFAULT_TOP_K})",
    "priority": "1 is the highest, 0 the default: breaks ties between equal deadlines",
}


@dataclass(frozen=True)
class Dial:
    """The dial of one request, validated; None where the client gave nothing.

    Args:
        density: a level name, or a number in (0, 1]; None for no pin.
        latency_budget_ms: end-to-end budget; None for the server default.
        min_accuracy: accuracy floor in (0, 1]; None for none.
        top_k: classes returned per image.
        priority: Triton's priority (1 highest, 0 default).
    """

    density: str | float | None = None
    latency_budget_ms: float | None = None
    min_accuracy: float | None = None
    top_k: int = DEFAULT_TOP_K
    priority: int = 0

    def budget_ms(self, default_ms: float) -> float:
        """The request's end-to-end budget: its own, else the server's default (SAIT_DEFAULT_BUDGET_MS)."""
        return self.latency_budget_ms if self.latency_budget_ms is not None else default_ms


def parse_density(value: object) -> str | float:
    """A level name stays a name (stripped); a number (or numeric text) must lie in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadRequest(f"density must be a level name or a number in (0, 1], got {_show(value)}")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise BadRequest("density is empty")
        try:
            value = float(text)
        except ValueError:
            return text
    number = _float("density", value)
    if not 0 < number <= 1:
        raise BadRequest(f"density {_show(value)} is out of range: give a level name or a number in (0, 1]")
    return number


def parse_dial(
    *,
    density: object = None,
    latency_budget_ms: object = None,
    min_accuracy: object = None,
    top_k: object = None,
    priority: object = None,
    timeout_us: object = None,
    num_classes: int = 1000,
) -> Dial:
    """Validate raw values (strings from a query, or JSON scalars). Raises BadRequest.

    Triton's `timeout` (microseconds) is a budget when `latency_budget_ms` is absent.
    """
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
    k = DEFAULT_TOP_K
    if top_k is not None:
        k = _integer("top_k", top_k)
        if not 1 <= k <= min(MAX_TOP_K, num_classes):
            raise BadRequest(f"top_k {k} is out of range: give 1..{min(MAX_TOP_K, num_classes)}")
    prio = 0
    if priority is not None:
        prio = _integer("priority", priority)
        if prio < 0:
            raise BadRequest(f"priority must be >= 0 (1 is the highest, 0 the default), got {prio}")
    return Dial(
        density=None if density is None else parse_density(density),
        latency_budget_ms=budget,
        min_accuracy=floor,
        top_k=k,
        priority=prio,
    )


def _show(value: object) -> str:
    """A client's value for an error message, cut short (it may be megabytes of digits)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _float(name: str, value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise BadRequest(f"{name} must be a number, got {_show(value)}") from None
    if not math.isfinite(number):
        raise BadRequest(f"{name} must be finite, got {_show(value)}")
    return number


def _number(name: str, value: object) -> float:
    if isinstance(value, bool):
        raise BadRequest(f"{name} must be a number, got {value!r}")
    return _float(name, value)


def _integer(name: str, value: object) -> int:
    number = _number(name, value)
    if number != int(number):
        raise BadRequest(f"{name} must be an integer, got {_show(value)}")
    return int(number)
