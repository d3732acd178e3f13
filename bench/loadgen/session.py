"""One load run end to end: schedule, send, summarize. Shared by the CLI, overload and soak."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from bench.loadgen.arrivals import Process, RateProfile, arrival_times
from bench.loadgen.client import Result, Target
from bench.loadgen.driver import check_live, make_client, prepare_target, run_closed_loop, run_open_loop
from bench.loadgen.payloads import Payload
from bench.loadgen.report import generator_stats, summarize
from bench.loadgen.scenario import Dials, Scenario


@dataclass(frozen=True)
class LoadRun:
    """Everything one open-loop run needs.

    Args:
        base_url: checked target URL (see driver.check_target).
        target: API, payload kind, model name.
        profile: offered rate over time.
        scenario: the mix of per-request dials.
        payloads: prepared request bodies.
        process: "poisson" or "constant" arrivals.
        max_requests: hard cap on the number of requests.
        max_inflight: most outstanding requests (the rest are counted as unsent).
        timeout_s: per-request client timeout.
        seed: seeds arrivals and the class mix.
        progress: show a tqdm bar.
        procs: generator processes that send the schedule together (bench/loadgen/procs.py);
            1 sends it from this process.
    """

    base_url: str
    target: Target
    profile: RateProfile
    scenario: Scenario
    payloads: Sequence[Payload]
    process: Process = "poisson"
    max_requests: int = 100_000
    max_inflight: int = 512
    timeout_s: float = 30.0
    seed: int = 0
    progress: bool = True
    procs: int = 1


def schedule(run: LoadRun) -> tuple[np.ndarray, list[Dials]]:
    """The whole run's (arrival times, dials): drawn once from the seed, however many
    processes send it."""
    arrivals = arrival_times(run.profile, process=run.process, max_requests=run.max_requests, seed=run.seed)
    return arrivals, run.scenario.assign(len(arrivals), seed=run.seed)


def run_summary(
    run: LoadRun, parts: Sequence[Sequence[Result]], cpu_wall_s: Sequence[tuple[float, float]]
) -> tuple[list[Result], dict]:
    """(results of all generators in schedule order, the run's summary).

    The summary is the one a single process writes for the same results (summarize is over
    the merged list), plus each generator's send-lag statistics, and the generator CPU summed.

    Args:
        parts: each generator's results.
        cpu_wall_s: each generator's (process CPU seconds, wall seconds) while it sent.
    """
    if len(parts) != len(cpu_wall_s):
        raise ValueError("need one (cpu_s, wall_s) per generator")
    results = sorted((r for part in parts for r in part), key=lambda r: (r.scheduled_s, r.index))
    summary = summarize(results, duration_s=run.profile.duration_s)
    gens = [generator_stats(part, cpu_s=c, wall_s=w) for part, (c, w) in zip(parts, cpu_wall_s)]
    # What the generators took of the machine: on a machine they share with the server, every
    # core they use is one the server does not have.
    summary["client_cpu_cores"] = sum(g["cpu_cores"] for g in gens)
    summary["nominal_rps"] = run.profile.expected_count / run.profile.duration_s
    summary["generators"] = gens
    return results, summary


def progress_bar(run: LoadRun, total: int) -> tqdm:
    """The run's bar over its scheduled requests (disabled unless run.progress)."""
    gens = f", {run.procs} generators" if run.procs > 1 else ""
    desc = f"{run.target.api} {run.profile.peak_rps:.0f}/s{gens}"
    return tqdm(total=total, unit="req", disable=not run.progress, mininterval=0.5, desc=desc)


async def execute_async(run: LoadRun) -> tuple[list[Result], dict]:
    """Send the whole schedule from this process (run.procs is not looked at)."""
    arrivals, dials = schedule(run)
    bar = progress_bar(run, len(arrivals))
    async with make_client(run.base_url, max_inflight=run.max_inflight, timeout_s=run.timeout_s) as client:
        await check_live(client)
        target = await prepare_target(client, run.target)
        cpu_s, wall_s = time.process_time(), time.perf_counter()
        try:
            results = await run_open_loop(
                client=client,
                target=target,
                arrivals_s=arrivals,
                dials=dials,
                scenario=run.scenario,
                payloads=run.payloads,
                max_inflight=run.max_inflight,
                timeout_s=run.timeout_s,
                on_done=lambda _r: bar.update(1),
            )
        finally:
            bar.close()
        cpu_s, wall_s = time.process_time() - cpu_s, time.perf_counter() - wall_s
    return run_summary(run, [results], [(cpu_s, wall_s)])


def run_async(coro):
    """asyncio.run on uvloop when it is installed: less client CPU per request, so the
    generator keeps its schedule longer on a machine it shares with the server."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def execute(run: LoadRun) -> tuple[list[Result], dict]:
    """Run the schedule against the server; (per-request results, summary)."""
    if run.procs > 1:
        from bench.loadgen.procs import execute_procs  # it imports this module

        return execute_procs(run)
    return run_async(execute_async(run))


def budget_point(
    *,
    base_url: str,
    target: Target,
    rate_rps: float,
    duration_s: float,
    budget_ms: float,
    payloads: Sequence[Payload],
    seed: int,
    procs: int = 1,
) -> tuple[list[Result], dict]:
    """One point of an overload sweep: Poisson arrivals at a constant rate, every request with
    the same budget and no density; the client waits 10 budgets (at least 30 s) per request;
    `procs` generator processes send it."""
    run = LoadRun(
        base_url=base_url,
        target=target,
        profile=RateProfile.constant(rate_rps, duration_s),
        scenario=Scenario.single(Dials(name="budget", latency_budget_ms=budget_ms)),
        payloads=payloads,
        seed=seed,
        progress=False,
        timeout_s=max(30.0, 10 * budget_ms / 1e3),
        procs=procs,
    )
    return execute(run)


def measure_capacity(
    *,
    base_url: str,
    target: Target,
    payloads: Sequence[Payload],
    concurrency: int,
    duration_s: float,
    dials: Dials | None = None,
    timeout_s: float = 60.0,
) -> dict:
    """Closed-loop throughput: `concurrency` clients back to back for duration_s.

    The first fifth of the time is a warm-up and is not counted. Requests carry a 60 s budget
    by default: with the server's default budget, the closed loop's own queue would be shed.
    """
    dials = dials or Dials(name="capacity", latency_budget_ms=60_000.0)

    async def go() -> list[Result]:
        async with make_client(base_url, max_inflight=concurrency, timeout_s=timeout_s) as client:
            tgt = await prepare_target(client, target)
            return await run_closed_loop(
                client=client,
                target=tgt,
                dials=dials,
                payloads=payloads,
                concurrency=concurrency,
                duration_s=duration_s,
            )

    results = run_async(go())
    warm_s = duration_s / 5
    # Count completions inside the measured window [warm_s, duration_s].
    done = [r for r in results if r.outcome == "ok" and warm_s <= r.scheduled_s + r.latency_ms / 1e3 <= duration_s]
    summary = summarize([r for r in results if r.scheduled_s >= warm_s], duration_s=duration_s - warm_s)
    summary["capacity_rps"] = len(done) / (duration_s - warm_s)
    summary["concurrency"] = concurrency
    return summary
