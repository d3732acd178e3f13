"""The engine's load signals: the arrival rate and the completion-time correction."""

from __future__ import annotations

import pytest

from service.engine.load_signals import ArrivalRate, CompletionRatio


def test_engine_completion_scale_is_a_clamped_ratio_of_sums():
    ratio = CompletionRatio(window=128)

    def extend(pairs):
        for measured, predicted in pairs:
            ratio.add(measured, predicted)

    assert ratio.scale() == 1.0  # too few requests to say
    extend([(120.0, 100.0)] * 15 + [(900.0, 600.0)])
    assert ratio.scale() == pytest.approx((15 * 120 + 900) / (15 * 100 + 600))
    extend([(50.0, 100.0)] * 16)  # faster than predicted: never below 1
    assert ratio.scale() >= 1.0
    extend([(1000.0, 100.0)] * 128)
    assert ratio.scale() == 2.0  # at most doubles a prediction
    extend([(100.0, 100.0)] * 128)  # the window forgets: only the last 128 count
    assert ratio.scale() == pytest.approx(1.0)


def test_arrival_rate_counts_images_over_the_window():
    rate = ArrivalRate(window_s=2.0)
    assert rate.rate(100.0) == 0.0
    for i in range(20):  # two images every 0.1 s for 2 s: 20 images/s
        rate.add(100.0 + 0.1 * i, images=2)
    # At 102.05 the window (100.05, 102.05] holds the 19 arrivals from 100.1 s on.
    assert rate.rate(102.05) == pytest.approx(19 * 2 / 2.0)
    # One second later only those from 101.1 s on: 9.
    assert rate.rate(103.05) == pytest.approx(9 * 2 / 2.0)
    assert rate.rate(110.0) == 0.0  # an idle spell forgets them all


def test_arrival_rate_right_after_the_first_request_is_not_a_flood():
    rate = ArrivalRate(window_s=2.0)
    rate.add(5.0)
    rate.add(5.001)
    # Two requests a millisecond apart: divided by at least a quarter window, not by 1 ms.
    assert rate.rate(5.001) == pytest.approx(2 / 0.5)
    assert rate.rate(6.0) == pytest.approx(2 / 1.0)


def test_arrival_rate_needs_a_positive_window():
    with pytest.raises(ValueError, match="window_s"):
        ArrivalRate(window_s=0)
