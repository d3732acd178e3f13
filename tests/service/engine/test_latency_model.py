"""The latency model: interpolation, the cleaned profile, online corrections."""

from __future__ import annotations

import pytest

from service.engine.latency_model import LatencyModel, monotone_profile


def test_latency_model_interpolates_and_corrects_online():
    lm = LatencyModel(
        profile_ms={"dense": {1: 10.0, 2: 14.0, 4: 22.0, 8: 38.0}}, max_batch_size=8, alpha=0.5, level_alpha=0.0
    )
    assert [round(lm.predict_ms("dense", b), 3) for b in (1, 2, 3, 4, 6, 8)] == [10, 14, 18, 22, 30, 38]
    assert lm.predict_ms("dense", 12) == pytest.approx(38 + 22)  # a full batch, then 4
    lm.observe("dense", 4, 44.0)  # twice as slow -> scale 1.5 after one EWMA step
    assert lm.scale() == pytest.approx(1.5)
    assert lm.predict_ms("dense", 8) == pytest.approx(57.0)  # every size moves
    lm.observe("dense", 4, 1e6)  # an outlier is clamped
    assert lm.scale() <= 0.5 * 1.5 + 0.5 * 4.0 + 1e-9


def test_scale_is_shared_by_all_levels():
    lm = LatencyModel(profile_ms={"dense": {1: 10.0}, "l050": {1: 5.0}}, max_batch_size=1, alpha=1.0)
    lm.observe("dense", 1, 20.0)
    assert lm.predict_ms("l050", 1) == pytest.approx(10.0)


def test_level_factor_learns_what_the_profile_got_wrong_about_one_level():
    lm = LatencyModel(profile_ms={"dense": {1: 10.0}, "l050": {1: 5.0}}, max_batch_size=1, alpha=0.2, level_alpha=0.2)
    for _ in range(200):  # l050 really takes 8 ms, dense really takes its profiled 10 ms
        lm.observe("l050", 1, 8.0)
        lm.observe("dense", 1, 10.0)
    assert lm.predict_ms("l050", 1) == pytest.approx(8.0, rel=0.05)
    assert lm.predict_ms("dense", 1) == pytest.approx(10.0, rel=0.05)
    assert lm.factor("l050") > lm.factor("dense")


def test_monotone_profile_averages_away_a_noisy_sample():
    noisy = {
        "dense": {1: 40.0, 4: 80.0, 8: 150.0},
        "l070": {1: 30.0, 4: 70.0, 8: 200.0},  # b8 noisy: slower than dense
        "l050": {1: 60.0, 4: 50.0, 8: 100.0},
    }  # b1 noisy: slower than dense and than its own b4
    clean = monotone_profile(noisy, ("dense", "l070", "l050"))
    for b in (1, 4, 8):
        assert clean["dense"][b] >= clean["l070"][b] >= clean["l050"][b]
    for points in clean.values():
        assert points[1] <= points[4] <= points[8]
    assert clean["dense"][8] == clean["l070"][8] == pytest.approx(175.0)  # the violators' mean
    assert clean["dense"][4] == 80.0  # samples that violate nothing are kept
    lm = LatencyModel(profile_ms=noisy, max_batch_size=8, order=("dense", "l070", "l050"))
    assert lm.predict_ms("l050", 8) < lm.predict_ms("dense", 8)
