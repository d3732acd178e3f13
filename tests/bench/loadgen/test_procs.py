"""Several generator processes: the split, the exact merge, and a real run on loopback."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import random

import numpy as np
import pytest

from bench.loadgen.arrivals import RateProfile
from bench.loadgen.client import OUTCOMES, Result, Target
from bench.loadgen.payloads import synthetic
from bench.loadgen.procs import read_part, split_schedule, write_part
from bench.loadgen.report import summarize
from bench.loadgen.scenario import Dials, Scenario, WeightedDials
from bench.loadgen.session import LoadRun, run_summary, schedule

SCENARIO = Scenario(
    name="mix",
    classes=(WeightedDials(Dials(name="fast", latency_budget_ms=50.0), 2.0), WeightedDials(Dials(name="slow"), 1.0)),
)


def _run(**kw) -> LoadRun:
    return LoadRun(
        base_url="http://127.0.0.1:1",
        target=Target(),
        profile=RateProfile.parse("40@2,10:80@3"),
        scenario=SCENARIO,
        payloads=synthetic(count=1),
        **kw,
    )


def _synthetic_results(run: LoadRun) -> list[Result]:
    """One Result per scheduled request with every outcome, latencies, levels and lags."""
    arrivals, dials = schedule(run)
    rng = random.Random(7)
    out = []
    for i, (t, d) in enumerate(zip(arrivals, dials)):
        outcome = rng.choice(OUTCOMES)
        r = Result(index=i, cls=d.name, scheduled_s=float(t), budget_ms=run.scenario.budget_ms(d), outcome=outcome)
        if outcome != "unsent":
            r.send_lag_ms = rng.uniform(0, 20)
            r.latency_ms = rng.uniform(5, 120)
        if outcome == "ok":
            r.level, r.batch_size = rng.choice(["dense", "l050"]), rng.randint(1, 8)
            r.server_total_ms, r.server_deadline_met = r.latency_ms / 2, rng.random() < 0.8
        out.append(r)
    return out


def test_split_deals_request_i_to_generator_i_mod_n():
    run = _run()
    arrivals, dials = schedule(run)
    shares = split_schedule(arrivals, dials, 3)
    assert [len(s[0]) for s in shares] == [len(arrivals) // 3 + (k < len(arrivals) % 3) for k in range(3)]
    union = sorted((i, t, d) for indices, times, ds in shares for i, t, d in zip(indices, times, ds, strict=True))
    assert [u[0] for u in union] == list(range(len(arrivals)))
    assert [u[1] for u in union] == arrivals.tolist() and [u[2] for u in union] == dials
    for indices, times, _ in shares:  # each generator's gaps are never shorter than the whole stream's
        assert np.all(np.diff(times) >= 0) and set(np.diff(indices)) <= {3}
    with pytest.raises(ValueError, match="procs must be >= 1"):
        split_schedule(arrivals, dials, 0)


def test_merging_generators_is_exactly_the_one_process_summary():
    run = _run(procs=3)
    whole = _synthetic_results(run)
    parts = [whole[k::3] for k in range(3)]
    for part in parts:
        random.Random(1).shuffle(part)  # arrival order within a generator does not matter
    cpu = [(0.5, 2.0), (0.25, 2.0), (1.0, 2.0)]
    merged, summary = run_summary(run, parts, cpu)
    single_results, single = run_summary(run, [whole], [(1.75, 2.0)])
    assert merged == whole == single_results  # in schedule order, every field intact

    def comparable(s: dict) -> str:
        return json.dumps({k: v for k, v in s.items() if k != "generators"}, sort_keys=True, default=str)

    assert comparable(summary) == comparable(single)  # same fields, same values (NaN included)
    assert summary["requests"] == len(whole) and summary["ok"] == sum(r.outcome == "ok" for r in whole)
    assert summary["client_cpu_cores"] == pytest.approx(0.25 + 0.125 + 0.5)
    gens = summary["generators"]
    assert [g["requests"] for g in gens] == [len(p) for p in parts]
    for g, part, (c, w) in zip(gens, parts, cpu):
        lags = [r.send_lag_ms for r in part if r.outcome != "unsent"]
        assert g["sent"] == len(lags) and g["unsent"] == len(part) - len(lags)
        assert g["send_lag_p99_ms"] == pytest.approx(float(np.percentile(lags, 99)))
        assert g["send_lag_max_ms"] == max(lags) and g["cpu_cores"] == c / w
    # The headline numbers are those of summarize over the whole list.
    direct = summarize(whole, duration_s=run.profile.duration_s)
    assert summary["p99_ms"] == direct["p99_ms"] and summary["per_class"].keys() == {"fast", "slow"}
    with pytest.raises(ValueError, match="one"):
        run_summary(run, parts, cpu[:2])


def test_a_generator_part_round_trips_through_its_file(tmp_path):
    results = _synthetic_results(_run())[:40]
    write_part(tmp_path / "g.json", results, 0.5, 2.0)
    back, cpu_s, wall_s = read_part(tmp_path / "g.json")
    assert (cpu_s, wall_s) == (0.5, 2.0) and len(back) == 40
    for a, b in zip(results, back):  # == fails on NaN; compare field by field
        for k, v in vars(a).items():
            w = getattr(b, k)
            assert (isinstance(v, float) and math.isnan(v) and math.isnan(w)) or v == w, (k, v, w)


needs_server = pytest.mark.skipif(
    importlib.util.find_spec("service.__main__") is None, reason="service.__main__ does not exist"
)


@pytest.fixture(scope="module")
def server():
    from bench.loadgen.server import ServerProcess

    settings = {"MODEL": "vit_tiny_test", "DEVICE": "cpu", "MAX_BATCH_SIZE": "4", "QUEUE_LIMIT": "256"}
    with ServerProcess(settings=settings, ready_timeout_s=120) as srv:
        yield srv


def _cli(server, out, procs: int) -> int:
    from bench.loadgen.__main__ import main

    argv = ["--url", server.url, "--api", "v2", "--payload", "uint8", "--model", "vit_tiny_test"]
    argv += ["--profile", "20@1,40@1", "--synthetic", "--budget-ms", "5000", "--seed", "3"]
    return main(argv + ["--procs", str(procs), "--quiet", "--out", str(out)])


@needs_server
def test_two_generators_against_a_real_server_write_one_merged_run(server, tmp_path):
    assert _cli(server, tmp_path / "p2", 2) == 0, server.log_tail()
    assert _cli(server, tmp_path / "p1", 1) == 0, server.log_tail()
    two = json.loads((tmp_path / "p2" / "summary.json").read_text())
    one = json.loads((tmp_path / "p1" / "summary.json").read_text())
    assert set(two) == set(one) and two["config"]["procs"] == 2
    assert two["requests"] == one["requests"] > 40 and two["ok"] == two["requests"], two
    assert len(two["generators"]) == 2 and len(one["generators"]) == 1
    assert sum(g["requests"] for g in two["generators"]) == two["requests"]
    assert all(g["sent"] == g["requests"] and g["send_lag_p99_ms"] is not None for g in two["generators"])
    assert two["series"] and (tmp_path / "p2" / "latency.png").stat().st_size > 1000
    segments = json.loads((tmp_path / "p2" / "segments.json").read_text())["segments"]
    assert sum(s["requests"] for s in segments) == two["requests"]

    def rows(path):
        with (path / "results.csv").open() as f:
            return [(r["index"], r["scheduled_s"], r["cls"]) for r in csv.DictReader(f)]

    # Same seed, same schedule: two generators offered exactly what one did, in schedule order.
    assert rows(tmp_path / "p2") == rows(tmp_path / "p1")
    assert [int(i) for i, _, _ in rows(tmp_path / "p2")] == list(range(two["requests"]))


def test_bad_procs_and_an_unreachable_server_are_one_line(tmp_path, capsys):
    from bench.loadgen.__main__ import main
    from bench.loadgen.server import free_port

    assert main(["--rate", "5", "--procs", "0", "--quiet"]) == 2
    assert "--procs must be 1..64" in capsys.readouterr().err
    url = f"http://127.0.0.1:{free_port()}"
    argv = ["--url", url, "--rate", "5", "--duration-s", "1", "--synthetic", "--procs", "2", "--quiet"]
    assert main(argv + ["--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach" in err[0]
