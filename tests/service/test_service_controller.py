"""The controller's policy, as tables: (dial, load, latency model, policy) -> level or refusal."""
from __future__ import annotations

import pytest

from service.controller import (
    Dial, LevelInfo, LoadSnapshot, Policy, choose_level, predicted_completion_ms, resolve_density,
)
from service.errors import BadRequest, Shed

LEVELS = (
    LevelInfo("dense", 1.0, 0.80),
    LevelInfo("l080", 0.78, 0.79),
    LevelInfo("l060", 0.59, 0.76),
    LevelInfo("l050", 0.49, 0.70),
)
NO_CARD = tuple(LevelInfo(lv.name, lv.gflops_ratio, None) for lv in LEVELS)


class LinearLatency:
    """ms(level, b) = fixed + per_image[level] * b."""

    per_image = {"dense": 10.0, "l080": 8.0, "l060": 6.0, "l050": 5.0}

    def predict_ms(self, level: str, batch_size: int) -> float:
        return 2.0 + self.per_image[level] * batch_size


LAT = LinearLatency()
POLICY = Policy(default_budget_ms=1000, safety_margin=0.1, max_batch_size=8, max_queue_delay_ms=5, queue_limit=64)


# (case, dial, queued per level, busy_ms, policy overrides) -> (level, reason)
CHOICES = [
    ("idle, default budget: dense", Dial(), {}, 0.0, {}, ("dense", "budget")),
    ("idle, 20 ms budget: dense fits (2+10+5=17 <= 18)", Dial(latency_budget_ms=20), {}, 0.0, {}, ("dense", "budget")),
    ("idle, 15 ms budget: l060 (2+6+5=13 <= 13.5)", Dial(latency_budget_ms=15), {}, 0.0, {}, ("l060", "budget")),
    ("queue at dense pushes to l060 (22+8+5=35 <= 36)", Dial(latency_budget_ms=40), {"dense": 2}, 0.0, {},
     ("l060", "budget")),
    ("busy worker counts (24+7+5=36 <= 36)", Dial(latency_budget_ms=40), {}, 24.0, {}, ("l050", "budget")),
    ("own queue fills the batch: no batching delay", Dial(latency_budget_ms=100, images=8), {}, 0.0, {}, ("dense", "budget")),
    ("elapsed decode time is spent budget", Dial(latency_budget_ms=20, elapsed_ms=5.5), {}, 0.0, {}, ("l050", "budget")),
    ("density name pins", Dial(density="l060"), {}, 0.0, {}, ("l060", "density")),
    ("density number: densest under it", Dial(density=0.8), {}, 0.0, {}, ("l080", "density")),
    ("density 1.0 is dense", Dial(density=1.0), {}, 0.0, {}, ("dense", "density")),
    ("density 0.6 picks l060 (0.59)", Dial(density=0.6), {}, 0.0, {}, ("l060", "density")),
    ("min_accuracy alone: fastest meeting it", Dial(min_accuracy=0.75), {}, 0.0, {}, ("l060", "accuracy")),
    ("min_accuracy + budget: densest meeting both", Dial(min_accuracy=0.75, latency_budget_ms=100), {}, 0.0, {},
     ("dense", "budget")),
    ("min_accuracy + tight budget", Dial(min_accuracy=0.75, latency_budget_ms=15), {}, 0.0, {}, ("l060", "budget")),
    ("fixed policy pins", Dial(), {}, 0.0, {"fixed_density": "l050"}, ("l050", "policy")),
    ("fixed:1.0", Dial(latency_budget_ms=500), {}, 0.0, {"fixed_density": "1.0"}, ("dense", "policy")),
    ("request density beats fixed policy", Dial(density="l080"), {}, 0.0, {"fixed_density": "l050"},
     ("l080", "density")),
    ("no margin: exact fit", Dial(latency_budget_ms=17), {}, 0.0, {"safety_margin": 0.0}, ("dense", "budget")),
]


@pytest.mark.parametrize("case,dial,queued,busy,overrides,expected", CHOICES, ids=[c[0] for c in CHOICES])
def test_choice(case, dial, queued, busy, overrides, expected):
    policy = Policy(**{**POLICY.__dict__, **overrides})
    d = choose_level(dial, LoadSnapshot(queued=queued, busy_ms=busy), LAT, levels=LEVELS, policy=policy)
    assert (d.level, d.reason) == expected
    assert d.predicted_ms <= d.budget_ms * (1 - policy.safety_margin) - dial.elapsed_ms


# (case, dial, queued, busy, policy overrides, exception, message part)
REFUSALS = [
    ("budget below the sparsest level", Dial(latency_budget_ms=5), {}, 0.0, {}, Shed, "cannot meet"),
    ("deep queue", Dial(latency_budget_ms=100), {"dense": 40}, 0.0, {}, Shed, "cannot meet"),
    ("queue limit", Dial(), {"l050": 64}, 0.0, {}, Shed, "queue full"),
    ("pinned density too slow", Dial(density="dense", latency_budget_ms=15), {}, 0.0, {}, Shed, "cannot meet"),
    ("fixed policy too slow", Dial(latency_budget_ms=15), {}, 0.0, {"fixed_density": "dense"}, Shed, "cannot meet"),
    ("unknown level", Dial(density="l010"), {}, 0.0, {}, BadRequest, "unknown level"),
    ("density below sparsest", Dial(density=0.2), {}, 0.0, {}, BadRequest, "below the sparsest"),
    ("density zero", Dial(density=0.0), {}, 0.0, {}, BadRequest, "out of range"),
    ("density above one", Dial(density=1.5), {}, 0.0, {}, BadRequest, "out of range"),
    ("accuracy unreachable", Dial(min_accuracy=0.9), {}, 0.0, {}, BadRequest, "no level reaches"),
    ("accuracy out of range", Dial(min_accuracy=1.5), {}, 0.0, {}, BadRequest, "out of range"),
]


@pytest.mark.parametrize("case,dial,queued,busy,overrides,exc,message", REFUSALS, ids=[c[0] for c in REFUSALS])
def test_refusal(case, dial, queued, busy, overrides, exc, message):
    policy = Policy(**{**POLICY.__dict__, **overrides})
    with pytest.raises(exc, match=message) as info:
        choose_level(dial, LoadSnapshot(queued=queued, busy_ms=busy), LAT, levels=LEVELS, policy=policy)
    if exc is Shed:
        assert info.value.status == 429
        assert int(info.value.headers()["Retry-After"]) >= 1


def test_min_accuracy_without_card_is_a_clear_400():
    with pytest.raises(BadRequest, match="level card") as info:
        choose_level(Dial(min_accuracy=0.5), LoadSnapshot(), LAT, levels=NO_CARD, policy=POLICY)
    assert info.value.status == 400


def test_prediction_is_queue_aware():
    # 3 queued at dense (other level) + 9 at l050 incl. this request's 1 -> a full batch of 8 and one of 2.
    load = LoadSnapshot(queued={"dense": 3, "l050": 9}, busy_ms=4.0)
    ms = predicted_completion_ms("l050", 1, load, LAT, POLICY)
    assert ms == pytest.approx(4.0 + (2 + 30) + (2 + 40) + (2 + 10) + 5)


def test_choice_is_pure():
    load = LoadSnapshot(queued={"dense": 1}, busy_ms=3.0)
    first = choose_level(Dial(latency_budget_ms=30), load, LAT, levels=LEVELS, policy=POLICY)
    assert [choose_level(Dial(latency_budget_ms=30), load, LAT, levels=LEVELS, policy=POLICY) for _ in range(3)] == [first] * 3


def test_resolve_density_accepts_text_numbers():
    assert resolve_density("0.5", LEVELS).name == "l050"
    assert resolve_density("dense", LEVELS).name == "dense"


def test_hand_back_overhead_counts():
    idle = choose_level(Dial(latency_budget_ms=20), LoadSnapshot(), LAT, levels=LEVELS, policy=POLICY)
    slow_loop = choose_level(Dial(latency_budget_ms=20), LoadSnapshot(overhead_ms=4.0), LAT, levels=LEVELS, policy=POLICY)
    assert (idle.level, slow_loop.level) == ("dense", "l060")
