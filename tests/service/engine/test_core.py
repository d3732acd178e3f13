"""The engine core: its interface, warm-up on the worker thread, request accounting."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import torch
from svc_helpers import TINY, metric_value, png_bytes, running_server

from service.dial import Dial
from service.engine.core import Engine, Health, StartupError
from service.errors import Unavailable
from service.settings import Settings


def test_torch_threads_setting_reaches_the_worker_thread():
    before = torch.get_num_threads()
    try:
        with running_server(torch_threads=1, default_budget_ms=60_000) as s:
            assert s.engine.torch_threads == 1
            r = httpx.post(
                f"{s.url}/v1/classify", content=png_bytes(), headers={"content-type": "image/png"}, timeout=60
            )
            assert r.status_code == 200, r.text
        torch.set_num_threads(before)  # the count is process-wide: undo it for the next server
        with running_server(default_budget_ms=60_000) as s:  # 0: torch's default, left alone
            assert s.engine.torch_threads == before
    finally:
        torch.set_num_threads(before)  # MKL's count is process-wide: leave the next test as it was


# -- the interface the front end uses, on an engine in this process -------------------------------
@pytest.fixture(scope="module")
def engine():
    eng = Engine.load(
        Settings(
            model=TINY,
            device="cpu",
            max_batch_size=2,
            max_queue_delay_ms=0,
            idle_probe_s=0,
            levels="dense,l070,l050",
            default_budget_ms=60_000,
        )
    )
    yield eng
    eng.close(5)


def test_describe_says_what_the_front_end_needs(engine):
    info = engine.describe()
    model = engine.model
    assert info.name == TINY and info.levels == ("dense", "l070", "l050")
    assert info.input_size == tuple(model.data_config.input_size) and info.data_config == model.data_config
    assert len(info.labels) == info.num_classes == model.timm_model.num_classes
    assert info.facts["l050"].gflops_ratio == round(model.level("l050").gflops_ratio, 4) < 1.0
    assert info.facts["dense"].gflops_ratio == 1.0 and not info.has_card and info.device == "cpu"


def test_warm_turns_ready_and_builds_the_queues_from_the_profile(engine):
    assert engine.health() == Health(live=True, ready=False)
    with pytest.raises(Unavailable, match="not ready"):
        engine.admit()
    engine.warm()
    assert engine.health() == Health(live=True, ready=True)
    engine.admit()
    # The latency model and the batcher are built from the profile the worker thread measured.
    assert engine.latency.levels == ("dense", "l070", "l050") and engine.worker.batcher is engine.batcher
    assert engine.latency.predict_ms("l050", 2) > 0 and engine.describe().ladder[0] == "dense"


def test_infer_serves_at_the_chosen_level_and_accounts_once(engine):
    if not engine.health().ready:
        engine.warm()
    image = torch.zeros((3, 224, 224), dtype=torch.uint8)
    arrival_s = time.perf_counter()
    engine.request_started()
    assert engine.pending() == 1
    result = asyncio.run(engine.infer([image, image], Dial(density="l050", top_k=3), arrival_s=arrival_s))
    engine.request_finished(
        api="v2", level=result.decision.level, outcome="ok", arrival_s=arrival_s, deadline_met=result.deadline_met
    )
    assert result.decision.level == "l050" and result.decision.reason == "density" and len(result.items) == 2
    assert result.top_k == 3 and len(result.items[0].top(3)[1]) == 3 and result.deadline_met
    assert engine.pending() == 0
    body, _ = asyncio.run(engine.render_metrics())
    text = body.decode()
    assert metric_value(text, "sait_requests_total", api="v2", level="l050", outcome="ok") == 1
    assert metric_value(text, "sait_inflight_requests") == 0
    stats = asyncio.run(engine.stats("1"))
    assert stats["inference_stats"]["success"]["count"] == 1 and stats["inference_count"] >= 2
    # The timeline the page draws saw the arrival (2 images) and the answer, once each.
    live = asyncio.run(engine.timeline())
    assert sum(s["arrived"] for s in live) == 1 and sum(s["arrived_images"] for s in live) == 2
    assert sum(s["served"].get("l050", 0) for s in live) == 1 and sum(s["met"] for s in live) == 1


def test_drain_refuses_new_requests(engine):
    engine.begin_drain()
    assert not engine.health().ready
    with pytest.raises(Unavailable, match="shutting down"):
        engine.admit()


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"level_card": "/nonexistent/card.json"}, "SAIT_LEVEL_CARD"),
        ({"levels": "dense,l033"}, "SAIT_LEVELS: unknown level(s) l033"),
        ({"policy": "fixed:l033"}, "SAIT_POLICY"),
        ({"levels": "dense,l070", "policy": "fixed:l050"}, "SAIT_POLICY"),
    ],
)
def test_startup_errors_are_one_line(overrides, message):
    with pytest.raises(StartupError) as info:
        Engine.load(Settings(model=TINY, device="cpu", **overrides))
    assert message in str(info.value) and "\n" not in str(info.value)
