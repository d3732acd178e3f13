"""Several generator processes send one schedule together (`python -m bench.loadgen --procs N`).

Why: one asyncio process sends a few thousand requests/s at most (its CPU per request), and
a GPU server answers more (deit_tiny alone: 24,500 images/s on an H200); a generator that
falls behind its schedule measures itself (docs/loadtest.md).

How the load is split: this process draws the whole schedule once (bench.loadgen.session:
the same arrival times, dials and payloads a one-process run with the same seed sends) and
deals request i to generator i mod N. So
- the server is offered exactly the requested profile: the union of the generators' streams
  is the one-process schedule, and runs with different N offer the same requests (a Poisson
  schedule stays Poisson at the requested rate, ramps stay exact);
- every generator gets the same number of requests (within one), at gaps no shorter than the
  whole stream's: each is paced at rate/N on average, none is handed a burst the others miss.
The alternatives give every process rate/N with its own seed (the sum is Poisson too, but a
different schedule for each N, so runs with different N do not offer the same requests) or
thin the stream at random (each part Poisson, but the counts and the bursts are uneven).

Timing: every generator connects and then waits at a start line; this process hands out one
start time on CLOCK_MONOTONIC (one clock for the whole machine on Linux), which each converts
to its own time.perf_counter(). All scheduled times count from that one origin, so merged
latencies are from one clock, and each generator's send lag says whether it kept up.

Results: each generator writes its per-request results to a JSON file in a temporary folder;
this process merges them by scheduled time into the one summary/CSV/plot a one-process run
writes (session.run_summary), with each generator's send-lag statistics beside it.

Bounded: the generators' start (READY_TIMEOUT_S), the run (the schedule's length, plus the
per-request timeout, plus a margin) and the join; a generator that fails or overruns ends the
run with one line, and every generator still running is terminated.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing as mp
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path

from bench.loadgen.client import Result, Target
from bench.loadgen.driver import check_live, make_client, prepare_target, run_open_loop
from bench.loadgen.payloads import Payload
from bench.loadgen.scenario import Dials, Scenario
from bench.loadgen.session import LoadRun, progress_bar, run_async, run_summary, schedule

READY_TIMEOUT_S = 120.0  # a generator's start (spawn, imports) on a busy machine
START_LEAD_S = 0.25  # from handing out the start time to the first request
END_MARGIN_S = 30.0  # past the schedule and the per-request timeout: writing the results


class GeneratorError(RuntimeError):
    """A generator process failed or overran (one readable line)."""


@dataclass(frozen=True)
class GeneratorJob:
    """One generator's share of a run (pickled to the spawned process).

    Args:
        number: the generator's number, 0..N-1.
        base_url: the server.
        target: API, payload kind and model, v2 input/output names already filled in.
        indices: the numbers in the whole schedule of the requests this generator sends.
        arrivals_s: their scheduled send times, seconds from the common origin.
        dials: their dials.
        scenario: judges deadlines.
        payloads: the run's request bodies (request i sends payload i mod len).
        max_inflight: this generator's cap on outstanding requests.
        timeout_s: per-request client timeout.
        out_path: where it writes its results (JSON).
    """

    number: int
    base_url: str
    target: Target
    indices: tuple[int, ...]
    arrivals_s: tuple[float, ...]
    dials: tuple[Dials, ...]
    scenario: Scenario
    payloads: tuple[Payload, ...]
    max_inflight: int
    timeout_s: float
    out_path: str


def split_schedule(arrivals_s: Sequence[float], dials: Sequence[Dials], procs: int) -> list[tuple]:
    """Deal request i to generator i mod procs: [(indices, arrivals_s, dials)] per generator."""
    if procs < 1:
        raise ValueError(f"procs must be >= 1, got {procs}")
    if len(dials) != len(arrivals_s):
        raise ValueError("need one Dials per arrival")
    return [
        (
            tuple(range(k, len(arrivals_s), procs)),
            tuple(float(t) for t in arrivals_s[k::procs]),
            tuple(dials[k::procs]),
        )
        for k in range(procs)
    ]


def write_part(path: Path, results: Sequence[Result], cpu_s: float, wall_s: float) -> None:
    """One generator's results. JSON (not a pickle): the file is read back as plain data."""
    doc = {"cpu_s": cpu_s, "wall_s": wall_s, "results": [dataclasses.asdict(r) for r in results]}
    Path(path).write_text(json.dumps(doc))  # NaN is written as NaN, which json reads back


def read_part(path: Path) -> tuple[list[Result], float, float]:
    doc = json.loads(Path(path).read_text())
    return [Result(**row) for row in doc["results"]], float(doc["cpu_s"]), float(doc["wall_s"])


def generator_main(job: GeneratorJob, conn: Connection, progress) -> None:
    """A generator process: connect, say ready, wait for the start time, send, write results.

    Messages to the parent: ("ready",), then ("done",) or ("error", one line).
    """
    try:
        run_async(_generate(job, conn, progress))
        message = ("done",)
    except Exception as exc:  # reported to the parent, which ends the run with this line
        text = str(exc).splitlines()[0] if str(exc) else ""
        message = ("error", f"generator {job.number}: {type(exc).__name__}: {text}".rstrip(": "))
    try:
        conn.send(message)
    except OSError:
        pass  # the parent is gone (interrupted): nobody to tell
    finally:
        conn.close()


async def _generate(job: GeneratorJob, conn: Connection, progress) -> None:
    done = 0

    def on_done(_result: Result) -> None:
        nonlocal done
        done += 1
        progress[job.number] = done  # one writer per slot: no lock

    async with make_client(job.base_url, max_inflight=job.max_inflight, timeout_s=job.timeout_s) as client:
        await check_live(client)  # the parent checked the target; this checks our own route to it
        conn.send(("ready",))
        if not conn.poll(READY_TIMEOUT_S):
            raise GeneratorError("no start time from the parent")
        message = conn.recv()
        if message[0] != "go":
            raise GeneratorError("stopped before the start")
        # The parent's start time is on CLOCK_MONOTONIC; our schedule runs on perf_counter.
        start_s = message[1] + time.perf_counter() - time.clock_gettime(time.CLOCK_MONOTONIC)
        cpu_s, wall_s = time.process_time(), time.perf_counter()
        results = await run_open_loop(
            client=client,
            target=job.target,
            arrivals_s=job.arrivals_s,
            dials=job.dials,
            scenario=job.scenario,
            payloads=job.payloads,
            max_inflight=job.max_inflight,
            timeout_s=job.timeout_s,
            on_done=on_done,
            indices=job.indices,
            start_s=start_s,
        )
        cpu_s, wall_s = time.process_time() - cpu_s, time.perf_counter() - wall_s
    write_part(Path(job.out_path), results, cpu_s, wall_s)


async def _resolve_target(run: LoadRun) -> Target:
    """Check the server once here (one readable line if it is down) and fill in the v2 names."""
    async with make_client(run.base_url, max_inflight=1, timeout_s=run.timeout_s) as client:
        await check_live(client)
        return await prepare_target(client, run.target)


def _receive(conns: dict[Connection, int], deadline_s: float, want: str, on_wait=None) -> None:
    """Wait until every generator in conns has sent `want`; raise GeneratorError on an error,
    a generator gone silent, or the deadline (time.monotonic())."""
    pending = dict(conns)
    while pending:
        left_s = deadline_s - time.monotonic()
        if left_s <= 0:
            raise GeneratorError(f"generators {sorted(pending.values())} did not finish in time ({want})")
        for conn in wait(list(pending), timeout=min(left_s, 0.5)):
            number = pending.pop(conn)
            try:
                message = conn.recv()
            except EOFError:
                raise GeneratorError(f"generator {number} exited without a word") from None
            if message[0] == "error":
                raise GeneratorError(message[1])
            if message[0] != want:
                raise GeneratorError(f"generator {number}: expected {want!r}, got {message[0]!r}")
        if on_wait is not None:
            on_wait()


def execute_procs(run: LoadRun) -> tuple[list[Result], dict]:
    """Send the run's schedule from run.procs generator processes; (merged results, summary).

    Each generator's cap on outstanding requests is run.max_inflight / run.procs (rounded up),
    so the run's cap stays run.max_inflight.
    """
    target = run_async(_resolve_target(run))
    arrivals, dials = schedule(run)
    shares = split_schedule(arrivals, dials, run.procs)
    ctx = mp.get_context("spawn")  # no fork of a process that may hold threads or an event loop
    progress = ctx.Array("q", run.procs, lock=False)
    per_gen_inflight = max(1, math.ceil(run.max_inflight / run.procs))
    bar = progress_bar(run, len(arrivals))
    with tempfile.TemporaryDirectory(prefix="sait-loadgen-") as tmp:
        jobs = [
            GeneratorJob(
                number=k,
                base_url=run.base_url,
                target=target,
                indices=indices,
                arrivals_s=times,
                dials=share_dials,
                scenario=run.scenario,
                payloads=tuple(run.payloads),
                max_inflight=per_gen_inflight,
                timeout_s=run.timeout_s,
                out_path=str(Path(tmp) / f"generator-{k}.json"),
            )
            for k, (indices, times, share_dials) in enumerate(shares)
        ]
        procs, conns = [], {}
        try:
            for job in jobs:
                mine, theirs = ctx.Pipe()
                proc = ctx.Process(
                    target=generator_main, args=(job, theirs, progress), name=f"loadgen-{job.number}", daemon=True
                )
                proc.start()
                theirs.close()
                procs.append(proc)
                conns[mine] = job.number
            _receive(conns, time.monotonic() + READY_TIMEOUT_S, "ready")
            start_s = time.clock_gettime(time.CLOCK_MONOTONIC) + START_LEAD_S
            for conn in conns:
                conn.send(("go", start_s))
            end_s = time.monotonic() + START_LEAD_S + run.profile.duration_s + run.timeout_s + 5.0 + END_MARGIN_S
            _receive(conns, end_s, "done", on_wait=lambda: bar.update(sum(progress) - bar.n))
            bar.update(len(arrivals) - bar.n)
            for proc in procs:
                proc.join(timeout=10.0)
            parts = [read_part(Path(job.out_path)) for job in jobs]
        finally:
            bar.close()
            for conn in conns:
                conn.close()
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
                    proc.join(timeout=5.0)
    return run_summary(run, [p[0] for p in parts], [(p[1], p[2]) for p in parts])
