"""The dial: one parser for the query string and v2 parameters, one density validator."""

from __future__ import annotations

import pytest

from service.dial import parse_dial
from service.errors import BadRequest


# -- dial and settings --------------------------------------------------------------------------------------
def test_parse_dial():
    p = parse_dial(density="0.7", latency_budget_ms="50", min_accuracy="0.7", top_k="3", priority=1)
    assert (p.density, p.latency_budget_ms, p.min_accuracy, p.top_k, p.priority) == (0.7, 50.0, 0.7, 3, 1)
    assert parse_dial(timeout_us=250_000).latency_budget_ms == 250.0  # Triton's timeout is microseconds
    assert parse_dial(density="l050").density == "l050"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"latency_budget_ms": "0"}, "out of range"),
        ({"latency_budget_ms": "abc"}, "must be a number"),
        ({"latency_budget_ms": "nan"}, "finite"),
        ({"min_accuracy": "1.2"}, "out of range"),
        ({"density": "-1"}, "out of range"),
        ({"density": 0.0}, "out of range"),
        ({"density": 1.5}, "out of range"),
        ({"min_accuracy": 1.5}, "out of range"),
        ({"density": ""}, "empty"),
        ({"density": True}, "density"),
        ({"top_k": "0"}, "top_k"),
        ({"top_k": "2.5"}, "integer"),
        ({"priority": -1}, "priority"),
    ],
)
def test_parse_dial_refuses(kwargs, message):
    with pytest.raises(BadRequest, match=message):
        parse_dial(**kwargs)
