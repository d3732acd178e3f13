"""The open-loop scheduler: fires on schedule, counts from the schedule, caps what is in flight."""

import asyncio
import time

import httpx
import numpy as np
import pytest

from bench.loadgen.client import Target
from bench.loadgen.driver import TargetError, check_target, run_open_loop
from bench.loadgen.payloads import synthetic
from bench.loadgen.scenario import Dials, Scenario

PAYLOADS = synthetic(count=2)


def slow_server(delay_s: float):
    """A mock server that answers after delay_s and records when each request arrived."""
    arrived = []

    async def handler(request: httpx.Request) -> httpx.Response:
        arrived.append(asyncio.get_running_loop().time())
        await asyncio.sleep(delay_s)
        return httpx.Response(200, json={"level": "dense"})

    return handler, arrived


def run(handler, arrivals, *, max_inflight=64, budget_ms=1000.0):
    scenario = Scenario.single(Dials(name="x", latency_budget_ms=budget_ms))
    dials = scenario.assign(len(arrivals))

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://t") as client:
            return await run_open_loop(
                client=client,
                target=Target(),
                arrivals_s=np.asarray(arrivals),
                dials=dials,
                scenario=scenario,
                payloads=PAYLOADS,
                max_inflight=max_inflight,
                timeout_s=5.0,
            )

    return asyncio.run(go())


def test_requests_fire_on_schedule_even_when_the_server_is_slow():
    # 10 requests 20 ms apart to a server that takes 300 ms: a closed loop would need 3 s.
    handler, arrived = slow_server(0.3)
    arrivals = np.arange(10) * 0.02
    results = run(handler, arrivals)
    gaps = np.diff(arrived)
    assert np.all(gaps < 0.06), gaps  # not serialized behind the slow answers
    assert all(r.outcome == "ok" for r in results)
    assert all(280 <= r.latency_ms < 1000 for r in results)
    assert all(r.send_lag_ms < 50 for r in results)


def test_cap_counts_unsent_requests():
    handler, _ = slow_server(0.5)
    results = run(handler, np.arange(6) * 0.01, max_inflight=2)
    outcomes = [r.outcome for r in results]
    assert outcomes[:2] == ["ok", "ok"] and outcomes[2:] == ["unsent"] * 4
    assert "cap of 2" in results[-1].error


def test_latency_counts_from_schedule_not_from_send():
    # A blocked event loop delays the send; the latency must include that delay.
    def blocking_handler(request):
        time.sleep(0.2)  # blocks the loop: later sends happen late
        return httpx.Response(200, json={"level": "dense"})

    results = run(blocking_handler, [0.0, 0.01], budget_ms=100.0)
    late = results[1]
    assert late.send_lag_ms > 150 and late.latency_ms > 150
    assert not late.deadline_met


def test_check_target_is_loopback_only_by_default():
    assert check_target("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert check_target("http://localhost:9") == "http://localhost:9"
    with pytest.raises(TargetError, match="refusing non-loopback"):
        check_target("http://10.1.2.3:8000")
    assert check_target("http://10.1.2.3:8000", allow_remote=True) == "http://10.1.2.3:8000"
    with pytest.raises(TargetError, match="plain http"):
        check_target("ftp://127.0.0.1")
    with pytest.raises(TargetError, match="plain http"):
        check_target("https://127.0.0.1:8443")


def test_part_of_a_schedule_keeps_its_numbers_payloads_and_origin():
    # A generator process sends requests 1 and 3 of a schedule: they keep those numbers,
    # send payloads 1 and 3 (mod 2: both the second), and count from the origin it is given.
    sent = []

    def handler(request):
        sent.append(request.content)
        return httpx.Response(200, json={"level": "dense"})

    scenario = Scenario.single(Dials(name="x"))

    async def go():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://t") as client:
            return await run_open_loop(
                client=client,
                target=Target(),
                arrivals_s=np.asarray([0.01, 0.03]),
                dials=scenario.assign(2),
                scenario=scenario,
                payloads=PAYLOADS,
                indices=[1, 3],
                start_s=time.perf_counter() + 0.2,  # later than the default lead
            )

    results = asyncio.run(go())
    assert [r.index for r in results] == [1, 3]
    assert sent == [PAYLOADS[1].jpeg, PAYLOADS[1].jpeg] != [PAYLOADS[0].jpeg] * 2
    # Sent on the given origin: not early (a lag of about -150 ms if it used the default lead).
    assert all(r.outcome == "ok" and -5 < r.send_lag_ms < 100 for r in results)
    with pytest.raises(ValueError, match="one index per arrival"):
        asyncio.run(
            run_open_loop(
                client=None,
                target=Target(),
                arrivals_s=np.asarray([0.0]),
                dials=scenario.assign(1),
                scenario=scenario,
                payloads=PAYLOADS,
                indices=[0, 1],
            )
        )
