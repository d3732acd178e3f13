"""The asyncio schedulers: open loop (fires on schedule) and closed loop (for capacity).

Open loop: every request is fired at its scheduled time whether or not earlier ones have
returned. Outstanding requests are capped (max_inflight) so a dead server cannot make the
client open sockets without end; a request that finds the cap full at its scheduled time is
not sent and is counted as "unsent" (a client limit, reported, never hidden).
Both loops are bounded by request count and by wall time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import httpx
import numpy as np

from bench.loadgen.client import HttpClient, Result, Target, discover_v2_io, send
from bench.loadgen.http1 import Http1Client
from bench.loadgen.payloads import Payload
from bench.loadgen.scenario import DEFAULT_BUDGET_MS, Dials, Scenario


class TargetError(ValueError):
    """A target URL that is refused or malformed (one readable line)."""


def check_target(url: str, *, allow_remote: bool = False) -> str:
    """Return the base URL if it is loopback (or allow_remote is set); raise otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise TargetError(f"target must be a plain http://host[:port] URL, got {url!r}")
    if not allow_remote:
        try:
            infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            raise TargetError(f"cannot resolve {parts.hostname}: {exc.strerror}") from None
        addrs = {info[4][0] for info in infos}
        if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs):
            raise TargetError(
                f"refusing non-loopback target {parts.hostname} ({', '.join(sorted(addrs))}); "
                "pass --allow-remote to load-test another machine you are allowed to load"
            )
    return url.rstrip("/")


def make_client(base_url: str, *, max_inflight: int, timeout_s: float) -> Http1Client:
    """The generator's HTTP client: one keep-alive connection per possible in-flight request,
    so the pool never queues on our side, and O(1) client work per request however many are
    in flight (see bench/loadgen/http1.py for why not httpx)."""
    return Http1Client(base_url, max_connections=max_inflight, timeout_s=timeout_s)


async def check_live(client: HttpClient) -> None:
    """Fail fast, in one line, when nothing answers at the target (before timing anything)."""
    try:
        response = await client.get("/v2/health/live", timeout=5.0)
    except httpx.HTTPError as exc:
        raise TargetError(f"cannot reach {client.base_url}: {type(exc).__name__} {exc}".rstrip()) from None
    if response.status_code != 200:
        raise TargetError(f"{client.base_url} is not live: /v2/health/live answered {response.status_code}")


async def prepare_target(client: HttpClient, target: Target) -> Target:
    """Fill in the v2 input and output names from the server's model metadata."""
    if target.api != "v2":
        return target
    input_name, output_name = await discover_v2_io(client, target.model, target.kind)
    return dataclasses.replace(target, input_name=input_name, output_name=output_name)


async def run_open_loop(
    *,
    client: HttpClient,
    target: Target,
    arrivals_s: np.ndarray,
    dials: Sequence[Dials],
    scenario: Scenario,
    payloads: Sequence[Payload],
    max_inflight: int = 512,
    timeout_s: float = 30.0,
    on_done: Callable[[Result], None] | None = None,
    indices: Sequence[int] | None = None,
    start_s: float | None = None,
) -> list[Result]:
    """Fire request i at arrivals_s[i]; return one Result per arrival, in schedule order.

    Args:
        client: an HTTP client bound to the target's base URL (see make_client).
        target: API and payload kind.
        arrivals_s: scheduled send times in seconds from the start (sorted).
        dials: the dials of each request (same length as arrivals_s).
        scenario: judges deadlines (default budget for requests that send none).
        payloads: request bodies, used round-robin.
        max_inflight: most outstanding requests; more are recorded as "unsent".
        timeout_s: per-request client timeout (also bounds the run's tail).
        on_done: called once per finished (or unsent) request, e.g. to move a progress bar.
        indices: each arrival's number in the whole schedule (default 0, 1, ...): a generator
            process that sends part of a schedule keeps the numbers (and payloads) of the whole.
        start_s: the run's time origin on time.perf_counter() (default: a little from now);
            generator processes of one run share one origin.
    """
    if len(dials) != len(arrivals_s):
        raise ValueError("need one Dials per arrival")
    if indices is not None and len(indices) != len(arrivals_s):
        raise ValueError("need one index per arrival")
    if not payloads:
        raise ValueError("need at least one payload")
    numbers = range(len(arrivals_s)) if indices is None else indices
    results = [
        Result(index=int(i), cls=d.name, scheduled_s=float(t), budget_ms=scenario.budget_ms(d))
        for i, t, d in zip(numbers, arrivals_s, dials)
    ]
    inflight: dict[asyncio.Task, Result] = {}

    def finished(task: asyncio.Task) -> None:
        inflight.pop(task, None)
        if on_done is not None and not task.cancelled():
            on_done(task.result())

    if start_s is None:
        start_s = time.perf_counter() + 0.05  # a little lead so the first request is on time
    for result, d in zip(results, dials):
        delay = start_s + result.scheduled_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(inflight) >= max_inflight:
            result.outcome, result.error = "unsent", f"client cap of {max_inflight} in flight"
            if on_done is not None:
                on_done(result)
            continue
        payload = payloads[result.index % len(payloads)]
        task = asyncio.create_task(send(client, target, d, payload, result, start_s=start_s))
        inflight[task] = result
        task.add_done_callback(finished)
    if inflight:
        # Each request has its own client timeout; this outer bound only guards against a hang.
        waiting = dict(inflight)
        _, pending = await asyncio.wait(set(waiting), timeout=timeout_s + 5.0)
        for task in pending:
            task.cancel()
            waiting[task].outcome, waiting[task].error = "timeout", "still pending at the end of the run"
    return results


async def run_closed_loop(
    *,
    client: HttpClient,
    target: Target,
    dials: Dials,
    payloads: Sequence[Payload],
    concurrency: int,
    duration_s: float,
    max_requests: int = 100_000,
) -> list[Result]:
    """`concurrency` workers each send back-to-back for duration_s: the server's capacity.

    Latency here is per request from its own send (a closed loop has no schedule).
    """
    budget_ms = dials.latency_budget_ms if dials.latency_budget_ms is not None else DEFAULT_BUDGET_MS
    results: list[Result] = []
    start_s = time.perf_counter()
    stop_s = start_s + duration_s

    async def worker() -> None:
        while time.perf_counter() < stop_s and len(results) < max_requests:
            result = Result(
                index=len(results), cls=dials.name, scheduled_s=time.perf_counter() - start_s, budget_ms=budget_ms
            )
            results.append(result)
            await send(client, target, dials, payloads[result.index % len(payloads)], result, start_s=start_s)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results
