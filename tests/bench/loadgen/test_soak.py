"""The soak's drift: first against last quarter, corrected for the host's speed."""

from bench.loadgen.client import Result
from bench.loadgen.soak import drift


def test_soak_drift_compares_first_and_last_quarter():
    results = [
        Result(
            index=i, cls="s", scheduled_s=i * 0.1, budget_ms=1000, outcome="ok", latency_ms=10.0 if i < 500 else 12.0
        )
        for i in range(1000)
    ]
    samples = [(t, 100 * 2**20 + (2**20 if t >= 50 else 0)) for t in range(100)]
    d = drift(results, samples, warmup_s=20, duration_s=100)
    assert d["first_window_s"] == (20, 40) and d["last_window_s"] == (80, 100)
    assert d["rss_growth"] == 0.01 and d["targets"]["rss_growth < 5%"]
    assert abs(d["p99_drift"] - 0.2) < 1e-9 and not d["targets"]["p99_drift < 10%"]
    assert d["errors"] == 0 and d["targets"]["zero errors"]


def _soak_results(latency_ms, compute_ms) -> list[Result]:
    """1000 requests over 100 s at `dense`, in batches of one; each callable maps the index."""
    return [
        Result(
            index=i,
            cls="s",
            scheduled_s=i * 0.1,
            budget_ms=1000,
            outcome="ok",
            level="dense",
            batch_size=1,
            latency_ms=latency_ms(i),
            compute_ms=compute_ms(i),
        )
        for i in range(1000)
    ]


def test_soak_drift_corrects_for_a_host_that_slowed_down():
    # The host slows by 20 % halfway: compute and latency scale alike. The end-to-end p99
    # drifts +20 % (the measure fails), the p99 per compute does not move.
    slower = lambda i: 1.2 if i >= 500 else 1.0
    d = drift(_soak_results(lambda i: 40.0 * slower(i), lambda i: 10.0 * slower(i)), [], warmup_s=20, duration_s=100)
    assert abs(d["host_slowdown"] - 0.2) < 1e-9 and abs(d["p99_drift"] - 0.2) < 1e-9
    assert abs(d["p99_per_compute_first"] - 4.0) < 1e-9 and abs(d["p99_drift_host_corrected"]) < 1e-9
    assert d["host_corrected_below_10pct"] and not d["targets"]["p99_drift < 10%"]
    assert d["levels_first"] == {"dense": 1.0} and d["mean_batch_last"] == 1.0
    assert not d["targets"]["rss_growth < 5%"]  # no RSS samples: nothing measured fails


def test_soak_drift_keeps_a_growing_queue_visible_after_the_correction():
    # Compute stays the same and the time around it grows (a leak, a queue): both drift.
    d = drift(
        _soak_results(lambda i: 40.0 + (20.0 if i >= 500 else 0), lambda i: 10.0), [], warmup_s=20, duration_s=100
    )
    assert abs(d["host_slowdown"]) < 1e-9
    assert abs(d["p99_drift_host_corrected"] - 0.5) < 1e-9 and not d["host_corrected_below_10pct"]
