"""Arrival schedules: counts, shapes and bounds of constant and Poisson arrivals."""

import numpy as np
import pytest

from bench.loadgen.arrivals import ProfileError, RateProfile, Segment, arrival_times


def test_constant_rate_is_evenly_paced():
    times = arrival_times(RateProfile.constant(10, 5), process="constant")
    assert len(times) == 50
    np.testing.assert_allclose(np.diff(times), 0.1, atol=1e-9)
    assert 0 < times[0] < 0.1 and times[-1] < 5


def test_poisson_count_and_gaps_match_rate():
    times = arrival_times(RateProfile.constant(200, 50), process="poisson", seed=3)
    # 10000 expected, sd 100: 5 sd either side.
    assert 9500 < len(times) < 10500
    gaps = np.diff(times)
    assert abs(gaps.mean() - 1 / 200) < 0.0003
    # Exponential gaps: the coefficient of variation is 1 (paced arrivals would give 0).
    assert 0.95 < gaps.std() / gaps.mean() < 1.05
    assert np.all(gaps >= 0)


def test_poisson_is_reproducible_by_seed():
    p = RateProfile.constant(20, 10)
    np.testing.assert_array_equal(arrival_times(p, seed=1), arrival_times(p, seed=1))
    assert not np.array_equal(arrival_times(p, seed=1), arrival_times(p, seed=2))


def test_ramp_puts_more_arrivals_late():
    times = arrival_times(RateProfile.ramp(0, 100, 10), process="constant")
    assert len(times) == 500  # area of the triangle
    first_half = np.sum(times < 5)
    assert first_half == 125  # a quarter of the area lies under the first half of a ramp from 0


def test_falling_ramp_and_steps():
    down = arrival_times(RateProfile.ramp(100, 0, 10), process="constant")
    assert len(down) == 500 and np.sum(down < 5) == 375
    steps = arrival_times(RateProfile.steps([10, 20, 40], 10), process="constant")
    counts = [np.sum((steps >= a) & (steps < a + 10)) for a in (0, 10, 20)]
    assert counts == [100, 200, 400]


def test_max_requests_caps_the_schedule():
    assert len(arrival_times(RateProfile.constant(1000, 100), process="constant", max_requests=7)) == 7
    assert len(arrival_times(RateProfile.constant(1000, 100), process="poisson", max_requests=7)) == 7


def test_parse_spec():
    p = RateProfile.parse("10@30, 5:50@60s,0@5")
    assert p.segments == (Segment(30, 10, 10), Segment(60, 5, 50), Segment(5, 0, 0))
    assert p.duration_s == 95 and p.peak_rps == 50
    assert p.rate_at(45) == pytest.approx(5 + 45 * 15 / 60)
    assert p.rate_at(1000) == 0
    assert p.scaled(2).peak_rps == 100


@pytest.mark.parametrize("spec", ["", "10", "x@5", "10@-1", "-5@10", "10@0", "1:2:3@4"])
def test_parse_rejects_bad_specs(spec):
    with pytest.raises(ProfileError):
        RateProfile.parse(spec)


def test_unknown_process_is_rejected():
    with pytest.raises(ProfileError, match="unknown arrival process"):
        arrival_times(RateProfile.constant(1, 1), process="bursty")
