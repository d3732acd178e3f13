"""Scenario files: parsing, validation and the seeded class mix."""

import json
from collections import Counter
from pathlib import Path

import pytest

from bench import loadgen
from bench.loadgen.scenario import Dials, Scenario, ScenarioError, load_scenario, parse_scenario

MIXED = """
name = "mix"
default_budget_ms = 800
[[classes]]
name = "fast"
weight = 3
latency_budget_ms = 100
[[classes]]
name = "pinned"
weight = 1
density = 0.6
top_k = 5
"""


def test_toml_and_json_give_the_same_scenario(tmp_path):
    toml_path = tmp_path / "mix.toml"
    toml_path.write_text(MIXED)
    from_toml = load_scenario(toml_path)
    json_path = tmp_path / "mix.json"
    json_path.write_text(
        json.dumps(
            {
                "name": "mix",
                "default_budget_ms": 800,
                "classes": [
                    {"name": "fast", "weight": 3, "latency_budget_ms": 100},
                    {"name": "pinned", "weight": 1, "density": 0.6, "top_k": 5},
                ],
            }
        )
    )
    assert load_scenario(json_path) == from_toml
    assert from_toml.default_budget_ms == 800
    fast, pinned = (c.dials for c in from_toml.classes)
    assert from_toml.budget_ms(fast) == 100 and from_toml.budget_ms(pinned) == 800


def test_query_leaves_out_absent_dials():
    assert Dials(density=0.6, top_k=5).query() == {"density": "0.6", "top_k": "5"}
    assert Dials(latency_budget_ms=250.0).query() == {"latency_budget_ms": "250"}
    assert Dials().query() == {}


def test_assign_follows_weights_and_seed(tmp_path):
    scenario = parse_scenario({"classes": [{"name": "a", "weight": 3}, {"name": "b", "weight": 1}]})
    picks = scenario.assign(4000, seed=5)
    share = Counter(d.name for d in picks)["a"] / 4000
    assert 0.72 < share < 0.78
    assert [d.name for d in scenario.assign(50, seed=5)] == [d.name for d in picks[:50]]


@pytest.mark.parametrize(
    "doc, message",
    [
        ({}, "non-empty 'classes'"),
        ({"classes": []}, "non-empty 'classes'"),
        ({"classes": [{"weight": 0}]}, "weight must be a number > 0"),
        ({"classes": [{"density": 1.5}]}, "density is a fraction"),
        ({"classes": [{"latency_budget_ms": -3}]}, "latency_budget_ms must be"),
        ({"classes": [{"min_accuracy": 80}]}, "min_accuracy is a fraction"),
        ({"classes": [{"top_k": 0}]}, "top_k must be an integer"),
        ({"classes": [{"budget": 1}]}, "unknown keys"),
        ({"classes": [{"name": "x"}, {"name": "x"}]}, "unique"),
        ({"classes": [{}], "rate": 3}, "unknown keys"),
    ],
)
def test_bad_scenarios_say_what_is_wrong(doc, message):
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(doc)


def test_unreadable_files_give_one_line(tmp_path):
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("classes = [")
    with pytest.raises(ScenarioError, match="not valid toml"):
        load_scenario(bad)


def test_single_and_shipped_scenarios_load():
    assert Scenario.single(Dials(name="x")).classes[0].weight == 1.0
    shipped = sorted((Path(loadgen.__file__).parent / "scenarios").glob("*.toml"))
    assert len(shipped) >= 2  # budget.toml, mixed.toml
    for path in shipped:
        assert load_scenario(path).classes
