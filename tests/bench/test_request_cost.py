"""The per-request CPU cost tool: thread CPU readings, their split, and a real short run."""

import json
import os
import threading
import time

import pytest

from bench.loadgen.server import ServerProcess, cpu_by_role, server_threads, thread_cpu_s
from bench.request_cost import CaseCost, main, markdown, median_costs


def test_thread_cpu_reads_this_process_and_sees_a_busy_thread():
    stop = threading.Event()
    tids = []

    def spin():
        tids.append(threading.get_native_id())
        while not stop.is_set():
            sum(range(1000))

    t = threading.Thread(target=spin)
    t.start()
    try:
        time.sleep(0.3)
        before = thread_cpu_s(os.getpid())
        user0, sys0 = before[tids[0]]
        # A spinning thread's CPU time grows; on a busy shared machine it may get little of a
        # core, so read until it has 0.1 s more (at most 10 s).
        give_up = time.monotonic() + 10
        while True:
            time.sleep(0.2)
            after = thread_cpu_s(os.getpid())
            user1, sys1 = after[tids[0]]
            if (user1 + sys1) - (user0 + sys0) >= 0.1 or time.monotonic() > give_up:
                break
    finally:
        stop.set()
        t.join()
    assert os.getpid() in before and tids[0] in after
    assert (user1 + sys1) - (user0 + sys0) >= 0.1


def test_cpu_by_role_separates_the_roles_and_counts_new_threads_from_zero():
    before = {
        (100, 100): ("api_loop", 1.5, 0.5),
        (100, 101): ("api_other", 11.0, 1.0),
        (200, 200): ("engine_loop", 2.0, 0.1),
        (200, 201): ("model", 50.0, 2.0),
    }
    after = {
        (100, 100): ("api_loop", 2.2, 0.7),
        (100, 101): ("api_other", 13.5, 1.5),
        (100, 102): ("api_other", 0.5, 0.25),  # started in between
        (200, 200): ("engine_loop", 2.5, 0.2),
        (200, 201): ("model", 60.0, 2.5),
    }
    spent = cpu_by_role(before, after)
    assert spent["api_loop"] == pytest.approx(0.7) and spent["api_loop_sys"] == pytest.approx(0.2)
    assert spent["api_other"] == pytest.approx(2.5 + 0.5) and spent["engine_loop"] == pytest.approx(0.5)
    assert spent["model"] == pytest.approx(10.0) and spent["engine_other"] == spent["supervisor"] == 0.0


def test_server_threads_names_the_roles_of_a_multi_process_server():
    with ServerProcess(
        settings={"MODEL": "vit_tiny_test", "DEVICE": "cpu", "API_PROCESSES": "1", "MAX_BATCH_SIZE": "2"}
    ) as server:
        roles = {role for role, _, _ in server_threads(server.pid).values()}
    # The worker thread names itself, so the model's CPU is told apart from the engine's own.
    assert {"supervisor", "api_loop", "engine_loop", "engine_other", "model"} <= roles


def test_markdown_names_machine_command_and_ceiling():
    cost = CaseCost(
        variant="this",
        api="v2",
        payload="uint8",
        requests=100,
        ok=99,
        event_loop_ms=2.0,
        event_loop_sys_ms=0.25,
        other_threads_ms=30.0,
        client_ms=0.5,
    )
    assert cost.ceiling_rps == 500.0
    doc = {
        "measured_utc": "2026-12-01 20:00 UTC",
        "cpu": "Test CPU",
        "model": "m",
        "level": "l040",
        "rate_rps": 20.0,
        "duration_s": 10.0,
        "warmup_s": 1.0,
        "settings": {},
        "commit": "abc1234",
        "command": "python -m bench.request_cost",
        "cases": [cost.__dict__],
    }
    text = markdown(doc)
    assert "**Test CPU**" in text and "`python -m bench.request_cost`" in text and "abc1234" in text
    assert "| this | v2 | uint8 | 99/100 | 2.00 | 0.25 | 30.0 | 0.50 | 500 |" in text
    assert "rounds" not in text


def test_rounds_are_summarized_by_their_median_per_variant_and_case():
    def cost(variant, loop_ms, ok=10):
        return CaseCost(
            variant=variant,
            api="v2",
            payload="uint8",
            requests=10,
            ok=ok,
            event_loop_ms=loop_ms,
            event_loop_sys_ms=0.1,
            other_threads_ms=20.0,
            client_ms=0.5,
        )

    costs = [
        cost("base", 2.0),
        cost("new", 1.0),
        cost("base", 3.0),
        cost("new", 1.5, ok=9),
        cost("base", 2.5),
        cost("new", 9.0),
    ]
    by_variant = {c.variant: c for c in median_costs(costs)}
    assert by_variant["base"].event_loop_ms == 2.5 and by_variant["new"].event_loop_ms == 1.5
    assert by_variant["new"].requests == 30 and by_variant["new"].ok == 29
    doc = {
        "measured_utc": "t",
        "cpu": "c",
        "model": "m",
        "level": "l040",
        "rate_rps": 20.0,
        "duration_s": 10.0,
        "warmup_s": 1.0,
        "settings": {},
        "commit": "x",
        "command": "cmd",
        "rounds": 3,
        "cases": [c.__dict__ for c in costs],
        "variants": [
            {"name": "base", "root": "/tmp/wt", "settings": {}, "commit": "abc1234"},
            {"name": "new", "root": None, "settings": {}},
        ],
    }
    text = markdown(doc)
    assert "3 rounds with the servers taking turns, medians" in text
    assert "| base | v2 | uint8 | 30/30 | 2.50 |" in text and "| new | v2 | uint8 | 29/30 | 1.50 |" in text
    assert "- `base`: checkout /tmp/wt (commit abc1234), settings {}\n- `new`: this checkout" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cases", "v3:png"], "unknown case(s) v3:png"),
        (["--rate", "0"], "--rate and --duration-s must be > 0"),
        (["--setting", "NOEQUALS"], "--setting takes KEY=VALUE"),
        (["--variant", "a:X=1", "--variant", "a:X=2"], "variant names distinct"),
        (["--variant", "old@/nonexistent:"], "is not a checkout"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_short_run_against_a_real_server(tmp_path):
    out = tmp_path / "cost.json"
    docs = tmp_path / "bench.md"
    docs.write_text("# bench\n<!-- request-cost:begin -->\nold\n<!-- request-cost:end -->\n")
    code = main(
        [
            "--model",
            "vit_tiny_test",
            "--level",
            "l050",
            "--cases",
            "v2:uint8,v1:jpeg",
            "--rate",
            "20",
            "--duration-s",
            "1.5",
            "--warmup-s",
            "0.5",
            "--images",
            str(tmp_path / "none"),
            "--setting",
            "MAX_BATCH_SIZE=4",
            "--out",
            str(out),
            "--docs",
            str(docs),
        ]
    )
    assert code == 0
    doc = json.loads(out.read_text())
    assert [(c["api"], c["payload"]) for c in doc["cases"]] == [("v2", "uint8"), ("v1", "jpeg")]
    for case in doc["cases"]:
        assert case["ok"] == case["requests"] == 30
        # Every answered request ran Python on the event loop and the model on the worker.
        assert 0 < case["event_loop_ms"] < 1000 and case["model_ms"] > 0 and case["client_ms"] > 0
        assert 0 <= case["event_loop_sys_ms"] <= case["event_loop_ms"]
        assert case["engine_loop_ms"] == case["supervisor_ms"] == 0.0  # one process: no engine process
    # JPEGs are decoded on the front end's pool, not on the event loop nor the worker.
    assert doc["cases"][1]["other_threads_ms"] > doc["cases"][0]["other_threads_ms"]
    text = docs.read_text()
    assert "old" not in text and "| this | v1 | jpeg | 30/30 |" in text
    assert text.startswith("# bench\n<!-- request-cost:begin -->\n") and text.endswith("<!-- request-cost:end -->\n")


def test_variants_take_turns_on_paused_servers(tmp_path):
    out = tmp_path / "cost.json"
    code = main(
        [
            "--model",
            "vit_tiny_test",
            "--level",
            "l050",
            "--cases",
            "v2:uint8",
            "--rate",
            "20",
            "--duration-s",
            "1",
            "--warmup-s",
            "0",
            "--images",
            str(tmp_path / "none"),
            "--rounds",
            "2",
            "--variant",
            "a:MAX_BATCH_SIZE=2",
            "--variant",
            "b:MAX_BATCH_SIZE=4",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    doc = json.loads(out.read_text())
    assert [c["variant"] for c in doc["cases"]] == ["a", "b", "a", "b"]
    assert all(c["ok"] == 20 and c["event_loop_ms"] > 0 for c in doc["cases"])


def test_server_env_makes_a_relative_hf_home_absolute(monkeypatch, tmp_path):
    from bench.loadgen.server import ServerProcess

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", "cache/hf")
    env = ServerProcess(settings={"POLICY": "fixed:dense"}, root=tmp_path / "elsewhere").env()
    assert env["HF_HOME"] == str(tmp_path / "cache" / "hf")
    assert env["SAIT_POLICY"] == "fixed:dense" and env["SAIT_HOST"] == "127.0.0.1"
