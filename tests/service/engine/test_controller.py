"""The controller's policy, as tables: (dial, load, latency model, policy) -> level or refusal."""

from __future__ import annotations

import pytest

from service.dial import Dial, parse_density
from service.engine.controller import (
    LevelInfo,
    LoadSnapshot,
    Policy,
    choose_level,
    ladder,
    overload_wait_share,
    predicted_completion_ms,
    resolve_density,
    waiting_ms,
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
POLICY = Policy(
    default_budget_ms=1000,
    safety_margin=0.1,
    max_batch_size=8,
    max_queue_delay_ms=5,
    queue_limit=64,
    degrade_from=0.3,
    min_speedup=1.1,
)


def ask(*, images: int = 1, elapsed_ms: float = 0.0, **dial) -> tuple[Dial, dict]:
    """A request's dial and what the controller is told besides: its image count, time already spent."""
    return Dial(**dial), {"images": images, "elapsed_ms": elapsed_ms}


# (case, dial, queued per level, busy_ms, policy overrides) -> (level, reason)
CHOICES = [
    ("idle, default budget: dense", ask(), {}, 0.0, {}, ("dense", "budget")),
    ("idle, 20 ms budget: dense fits (2+10+5=17 <= 18)", ask(latency_budget_ms=20), {}, 0.0, {}, ("dense", "budget")),
    ("idle, 15 ms budget: l060 (2+6+5=13 <= 13.5)", ask(latency_budget_ms=15), {}, 0.0, {}, ("l060", "budget")),
    (
        "queue at dense pushes to l060 (22+8+5=35 <= 36)",
        ask(latency_budget_ms=40),
        {"dense": 2},
        0.0,
        {},
        ("l060", "budget"),
    ),
    ("busy worker counts (24+7+5=36 <= 36)", ask(latency_budget_ms=40), {}, 24.0, {}, ("l050", "budget")),
    (
        "own queue fills the batch: no batching delay",
        ask(latency_budget_ms=100, images=8),
        {},
        0.0,
        {},
        ("dense", "budget"),
    ),
    ("elapsed decode time is spent budget", ask(latency_budget_ms=20, elapsed_ms=5.5), {}, 0.0, {}, ("l050", "budget")),
    ("density name pins", ask(density="l060"), {}, 0.0, {}, ("l060", "density")),
    ("density number: densest under it", ask(density=0.8), {}, 0.0, {}, ("l080", "density")),
    ("density 1.0 is dense", ask(density=1.0), {}, 0.0, {}, ("dense", "density")),
    ("density 0.6 picks l060 (0.59)", ask(density=0.6), {}, 0.0, {}, ("l060", "density")),
    ("min_accuracy alone: fastest meeting it", ask(min_accuracy=0.75), {}, 0.0, {}, ("l060", "accuracy")),
    (
        "min_accuracy + budget: densest meeting both",
        ask(min_accuracy=0.75, latency_budget_ms=100),
        {},
        0.0,
        {},
        ("dense", "budget"),
    ),
    ("min_accuracy + tight budget", ask(min_accuracy=0.75, latency_budget_ms=15), {}, 0.0, {}, ("l060", "budget")),
    ("fixed policy pins", ask(), {}, 0.0, {"fixed_density": "l050"}, ("l050", "policy")),
    ("fixed:1.0", ask(latency_budget_ms=500), {}, 0.0, {"fixed_density": 1.0}, ("dense", "policy")),
    (
        "request density beats fixed policy",
        ask(density="l080"),
        {},
        0.0,
        {"fixed_density": "l050"},
        ("l080", "density"),
    ),
    ("no margin: exact fit", ask(latency_budget_ms=17), {}, 0.0, {"safety_margin": 0.0}, ("dense", "budget")),
]


@pytest.mark.parametrize("case,dial,queued,busy,overrides,expected", CHOICES, ids=[c[0] for c in CHOICES])
def test_choice(case, dial, queued, busy, overrides, expected):
    policy = Policy(**{**POLICY.__dict__, **overrides})
    dial, request = dial
    d = choose_level(dial, LoadSnapshot(queued=queued, busy_ms=busy), LAT, levels=LEVELS, policy=policy, **request)
    assert (d.level, d.reason) == expected
    assert d.predicted_ms <= d.budget_ms * (1 - policy.safety_margin) - request["elapsed_ms"]


# (case, dial, queued, busy, policy overrides, exception, message part)
REFUSALS = [
    ("budget below the sparsest level", ask(latency_budget_ms=5), {}, 0.0, {}, Shed, "cannot meet"),
    ("deep queue", ask(latency_budget_ms=100), {"dense": 40}, 0.0, {}, Shed, "cannot meet"),
    ("queue limit", ask(), {"l050": 64}, 0.0, {}, Shed, "queue full"),
    ("pinned density too slow", ask(density="dense", latency_budget_ms=15), {}, 0.0, {}, Shed, "cannot meet"),
    ("fixed policy too slow", ask(latency_budget_ms=15), {}, 0.0, {"fixed_density": "dense"}, Shed, "cannot meet"),
    ("unknown level", ask(density="l010"), {}, 0.0, {}, BadRequest, "unknown level"),
    ("density below sparsest", ask(density=0.2), {}, 0.0, {}, BadRequest, "below the sparsest"),
    ("accuracy unreachable", ask(min_accuracy=0.9), {}, 0.0, {}, BadRequest, "no level reaches"),
]


@pytest.mark.parametrize("case,dial,queued,busy,overrides,exc,message", REFUSALS, ids=[c[0] for c in REFUSALS])
def test_refusal(case, dial, queued, busy, overrides, exc, message):
    policy = Policy(**{**POLICY.__dict__, **overrides})
    dial, request = dial
    with pytest.raises(exc, match=message) as info:
        choose_level(dial, LoadSnapshot(queued=queued, busy_ms=busy), LAT, levels=LEVELS, policy=policy, **request)
    if exc is Shed:
        assert info.value.status == 429
        assert int(info.value.headers()["Retry-After"]) >= 1


def test_min_accuracy_without_card_is_a_clear_400():
    with pytest.raises(BadRequest, match="level card") as info:
        choose_level(Dial(min_accuracy=0.5), LoadSnapshot(), LAT, levels=NO_CARD, policy=POLICY)
    assert info.value.status == 400


def test_prediction_is_queue_aware():
    # 3 queued at dense (other level) + 9 at l050 incl. this request's 1: deeper than one batch
    # of 8, so this request's batch is costed full: two full batches.
    load = LoadSnapshot(queued={"dense": 3, "l050": 9}, busy_ms=4.0)
    ms = predicted_completion_ms("l050", 1, load, LAT, POLICY)
    assert ms == pytest.approx(4.0 + (2 + 30) + 2 * (2 + 40) + 5)
    # A shallow queue: the request's batch is costed at the size it has now.
    load = LoadSnapshot(queued={"dense": 3, "l050": 4}, busy_ms=4.0)
    assert predicted_completion_ms("l050", 1, load, LAT, POLICY) == pytest.approx(4.0 + (2 + 30) + (2 + 25) + 5)


def test_choice_is_pure():
    load = LoadSnapshot(queued={"dense": 1}, busy_ms=3.0)
    first = choose_level(Dial(latency_budget_ms=30), load, LAT, levels=LEVELS, policy=POLICY)
    assert [choose_level(Dial(latency_budget_ms=30), load, LAT, levels=LEVELS, policy=POLICY) for _ in range(3)] == [
        first
    ] * 3


def test_resolve_density_takes_parsed_text_numbers():
    # Text is parsed once, by service.dial.parse_density; the controller resolves what it returns.
    assert resolve_density(parse_density("0.5"), LEVELS).name == "l050"
    assert resolve_density(parse_density(" dense "), LEVELS).name == "dense"


def test_hand_back_overhead_counts():
    idle = choose_level(Dial(latency_budget_ms=20), LoadSnapshot(), LAT, levels=LEVELS, policy=POLICY)
    slow_loop = choose_level(
        Dial(latency_budget_ms=20), LoadSnapshot(overhead_ms=4.0), LAT, levels=LEVELS, policy=POLICY
    )
    assert (idle.level, slow_loop.level) == ("dense", "l060")


# The degradation ladder, with the 1000 ms default budget (usable 900 ms) and four rungs whose
# shares are 0.3, 0.533, 0.767, 1.0 of it: 270, 480, 690, 900 ms of waiting work.
# Dense costs 2 + 10 b ms per batch of b (<= 8), so n dense images queued wait
# ceil(n/8) * 2 + 10 n ms.
LADDER = [
    ("idle: dense", {}, 0.0, "dense"),
    ("a little waiting work: still dense (10 x 8 + 2 x 2 = 84 ms)", {"dense": 8}, 0.0, "dense"),
    ("waiting 270 ms is the densest rung's limit: still dense", {}, 270.0, "dense"),
    ("waiting past the first rung: l080", {}, 271.0, "l080"),
    ("work queued at any level counts (l050: 40 x 5 + 5 x 2 = 210, + 100 busy)", {"l050": 40}, 100.0, "l080"),
    ("past the second rung: l060", {}, 481.0, "l060"),
    ("past the third rung: l050, the sparsest, limited only by the deadline", {}, 800.0, "l050"),
]


@pytest.mark.parametrize("case,queued,busy,expected", LADDER, ids=[c[0] for c in LADDER])
def test_ladder_degrades_with_waiting_work(case, queued, busy, expected):
    d = choose_level(Dial(), LoadSnapshot(queued=queued, busy_ms=busy), LAT, levels=LEVELS, policy=POLICY)
    assert (d.level, d.reason) == (expected, "budget")


def test_ladder_off_is_densest_that_fits():
    off = Policy(**{**POLICY.__dict__, "degrade_from": 1.0})
    d = choose_level(Dial(), LoadSnapshot(busy_ms=800.0), LAT, levels=LEVELS, policy=off)
    assert d.level == "dense"  # 800 + 12 + 5 <= 900


def test_ladder_does_not_apply_to_pins_or_an_accuracy_floor_alone():
    load = LoadSnapshot(busy_ms=800.0)
    assert choose_level(Dial(density="dense"), load, LAT, levels=LEVELS, policy=POLICY).level == "dense"
    fixed = Policy(**{**POLICY.__dict__, "fixed_density": "dense"})
    assert choose_level(Dial(), load, LAT, levels=LEVELS, policy=fixed).level == "dense"
    assert choose_level(Dial(min_accuracy=0.75), load, LAT, levels=LEVELS, policy=POLICY).level == "l060"


def test_ladder_skips_levels_that_buy_no_speed():
    class SlowL080(LinearLatency):
        per_image = {**LinearLatency.per_image, "l080": 9.9}  # 1 % faster than dense per image

    rungs = ladder(LEVELS, SlowL080(), POLICY)
    assert [lv.name for lv, _ in rungs] == ["dense", "l060", "l050"]
    assert [round(share, 3) for _, share in rungs] == [0.3, 0.65, 1.0]
    # Past dense's rung the request goes straight to l060, never to the slower-than-worth-it l080.
    d = choose_level(Dial(), LoadSnapshot(busy_ms=300.0), SlowL080(), levels=LEVELS, policy=POLICY)
    assert d.level == "l060"


def test_waiting_work_is_level_independent():
    load = LoadSnapshot(queued={"dense": 9, "l050": 1}, busy_ms=7.0, overhead_ms=1.0)
    assert waiting_ms(load, LAT, POLICY) == pytest.approx(7 + 1 + (2 + 80) + (2 + 10) + (2 + 5))


def test_ladder_still_sheds_when_the_sparsest_cannot_make_it():
    with pytest.raises(Shed, match="cannot meet"):
        choose_level(Dial(), LoadSnapshot(busy_ms=895.0), LAT, levels=LEVELS, policy=POLICY)


def test_rungs_are_few_and_well_separated():
    class Measured:
        """Per-image ms at batch 32 as a start-up profile of DeiT-Tiny on the 2-core CPU gave them."""

        per_image = {
            "dense": 29.1,
            "l090": 27.5,
            "l080": 24.8,
            "l070": 21.0,
            "l065": 18.4,
            "l060": 18.4,
            "l050": 14.7,
            "l040": 13.4,
        }

        def predict_ms(self, level, batch_size):
            return self.per_image[level] * batch_size

    names = list(Measured.per_image)
    levels = [LevelInfo(n, 1.0 - 0.08 * i) for i, n in enumerate(names)]
    policy = Policy(max_batch_size=32)  # the default spacing, 1.2x
    # From l040 up: l060 is 1.37x l040, l080 1.35x l060; dense is only 1.17x l080 and takes its place.
    assert [lv.name for lv, _ in ladder(levels, Measured(), policy)] == ["dense", "l060", "l040"]
    # Dense and the sparsest are rungs however close they are.
    assert [lv.name for lv, _ in ladder(levels[-2:], Measured(), policy)] == ["l050", "l040"]
    assert [(lv.name, share) for lv, share in ladder(levels[:1], Measured(), policy)] == [("dense", 1.0)]


def test_fixed_rungs_keep_the_densest_and_sparsest_candidates():
    fixed = Policy(**{**POLICY.__dict__, "rungs": ("dense", "l060", "l050")})
    assert [lv.name for lv, _ in ladder(LEVELS, LAT, fixed)] == ["dense", "l060", "l050"]
    # An accuracy floor that leaves dense..l080 makes l080 the sparsest candidate, hence a rung.
    assert [lv.name for lv, _ in ladder(LEVELS[:2], LAT, fixed)] == ["dense", "l080"]


def test_completion_scale_stretches_predictions_and_waiting():
    load = LoadSnapshot(queued={"dense": 8}, busy_ms=10.0)
    slow = LoadSnapshot(queued={"dense": 8}, busy_ms=10.0, completion_scale=1.5)
    assert predicted_completion_ms("dense", 1, slow, LAT, POLICY) == pytest.approx(
        1.5 * predicted_completion_ms("dense", 1, load, LAT, POLICY)
    )
    assert waiting_ms(slow, LAT, POLICY) == pytest.approx(1.5 * waiting_ms(load, LAT, POLICY))
    # 270 ms of raw waiting keeps dense; stretched by 1.5 it is past the first rung.
    assert choose_level(Dial(), LoadSnapshot(busy_ms=270.0), LAT, levels=LEVELS, policy=POLICY).level == "dense"
    assert (
        choose_level(Dial(), LoadSnapshot(busy_ms=270.0, completion_scale=1.5), LAT, levels=LEVELS, policy=POLICY).level
        == "l080"
    )


# The rate rule: with max_utilization 0.85 a second of wall time holds 850 ms of compute.
# Per image in a full batch of 8: dense 82/8 = 10.25 ms, l080 8.25, l060 6.25, l050 5.25;
# so dense keeps up with 82.9 images/s, l080 103, l060 136, l050 161.9.
RATES = [
    ("rate unknown (0): dense", 0.0, 0.0, "dense"),
    ("80/s: dense keeps up (820 ms/s)", 80.0, 0.0, "dense"),
    ("90/s: dense would take 922 ms/s, l080 742", 90.0, 0.0, "l080"),
    ("120/s: l060 (750 ms/s)", 120.0, 0.0, "l060"),
    ("150/s: l050 (787 ms/s)", 150.0, 0.0, "l050"),
    ("500/s: nothing keeps up, the sparsest serves (the deadline sheds the excess)", 500.0, 0.0, "l050"),
    ("the sparser of the rate rule and the queue rule: 90/s (l080) with 481 ms waiting (l060)", 90.0, 481.0, "l060"),
    ("the sparser of the two: 120/s (l060) with 271 ms waiting (l080)", 120.0, 271.0, "l060"),
]


@pytest.mark.parametrize("case,rate,busy,expected", RATES, ids=[c[0] for c in RATES])
def test_rate_rule_serves_a_steady_load_at_a_level_that_keeps_up(case, rate, busy, expected):
    load = LoadSnapshot(busy_ms=busy, arrival_rate_per_s=rate)
    assert choose_level(Dial(), load, LAT, levels=LEVELS, policy=POLICY).level == expected


def test_rate_rule_leaves_pins_alone_and_follows_max_utilization():
    flood = LoadSnapshot(arrival_rate_per_s=500.0)
    assert choose_level(Dial(density="dense"), flood, LAT, levels=LEVELS, policy=POLICY).level == "dense"
    fixed = Policy(**{**POLICY.__dict__, "fixed_density": "l080"})
    assert choose_level(Dial(), flood, LAT, levels=LEVELS, policy=fixed).level == "l080"
    # At 90/s dense takes 922 ms of every second: over 0.85, under 1.
    load = LoadSnapshot(arrival_rate_per_s=90.0)
    full = Policy(**{**POLICY.__dict__, "max_utilization": 1.0})
    assert choose_level(Dial(), load, LAT, levels=LEVELS, policy=full).level == "dense"
    assert choose_level(Dial(), load, LAT, levels=LEVELS, policy=POLICY).level == "l080"


# Overload: l050 serves 850/5.25 = 162 images/s at 0.85 utilization and 190.5 at 1.0; past that
# the waiting work may fill only 0.8 of the usable 900 ms (720 ms) before requests are shed.
# l050, the sparsest, serves 8 / (2 + 5 * 8) ms = 190 images/s in full batches; usable budget 900 ms.
OVERLOAD = [
    ("190/s (l050 at 0.998): not overloaded, the deadline alone limits", 190.0, 800.0, "l050"),
    ("300/s (1.58x l050): the full limit, 530 ms waiting is under 0.6 x 900", 300.0, 530.0, "l050"),
    ("300/s: 541 ms waiting is past 0.6 of the budget, shed", 300.0, 541.0, Shed),
    ("210/s (1.105x): the limit tightened a fifth of the way, to 0.92 x 900 = 828 ms", 210.0, 820.0, "l050"),
    ("210/s: 835 ms waiting is past 828 ms, shed", 210.0, 835.0, Shed),
    ("no rate known: only the deadline limits", 0.0, 800.0, "l050"),
]


def test_overload_limit_tightens_with_the_excess():
    assert overload_wait_share(0.5, POLICY) == 1.0 and overload_wait_share(1.0, POLICY) == 1.0
    assert overload_wait_share(1.25, POLICY) == pytest.approx(0.8)  # half way to 1.5x: half of 1 - 0.6
    assert overload_wait_share(1.5, POLICY) == pytest.approx(0.6) and overload_wait_share(3.0, POLICY) == pytest.approx(
        0.6
    )


@pytest.mark.parametrize("case,rate,busy,expected", OVERLOAD, ids=[c[0] for c in OVERLOAD])
def test_overload_keeps_the_queue_short(case, rate, busy, expected):
    load = LoadSnapshot(busy_ms=busy, arrival_rate_per_s=rate)
    if expected is Shed:
        with pytest.raises(Shed, match="overloaded.*SAIT_OVERLOAD_WAIT_SHARE") as info:
            choose_level(Dial(), load, LAT, levels=LEVELS, policy=POLICY)
        assert int(info.value.headers()["Retry-After"]) >= 1
    else:
        assert choose_level(Dial(), load, LAT, levels=LEVELS, policy=POLICY).level == expected


def test_overload_share_one_is_off_and_completion_scale_counts_in_capacity():
    off = Policy(**{**POLICY.__dict__, "overload_wait_share": 1.0})
    assert (
        choose_level(
            Dial(), LoadSnapshot(busy_ms=800.0, arrival_rate_per_s=200.0), LAT, levels=LEVELS, policy=off
        ).level
        == "l050"
    )
    # 150/s fits l050 (0.79 of its time); measured completions 2x the predictions make it 1.58:
    # overloaded, so 560 ms of waiting work, stretched to 1120, sheds (the limit is 0.6 x 900).
    assert (
        choose_level(
            Dial(), LoadSnapshot(busy_ms=560.0, arrival_rate_per_s=150.0), LAT, levels=LEVELS, policy=POLICY
        ).level
        == "l050"
    )
    with pytest.raises(Shed, match="overloaded"):
        choose_level(
            Dial(),
            LoadSnapshot(busy_ms=560.0, arrival_rate_per_s=150.0, completion_scale=2.0),
            LAT,
            levels=LEVELS,
            policy=POLICY,
        )


def test_completion_scale_does_not_push_a_light_load_off_dense():
    # 80/s keeps dense (820 ms/s); a completion scale of 2 (short waits at light load are
    # dominated by fixed costs) must not make the rate rule skip it.
    load = LoadSnapshot(arrival_rate_per_s=80.0, completion_scale=2.0)
    assert choose_level(Dial(), load, LAT, levels=LEVELS, policy=POLICY).level == "dense"
