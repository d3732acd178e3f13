"""locust scenarios for sait-serve: the native API and KServe v2, with per-request dials.

Single machine:
    locust -f bench/locustfile.py --headless -u 20 -r 5 -t 2m --host http://127.0.0.1:8000 \
        NativeUser --budget-ms 250
Distributed (one master, several workers; the custom options travel from master to workers):
    locust -f bench/locustfile.py --master --headless -u 400 -r 40 -t 5m --expect-workers 4 \
        --host http://SERVER:8000 --budget-ms 250
    locust -f bench/locustfile.py --worker --master-host MASTER     # on each worker machine

Each user sends one request, then waits so that it offers `--user-rps` requests per second
(constant_throughput). locust is closed-loop per user: a user whose request is slow sends
later, so its response times understate queueing under overload; use `python -m
bench.loadgen` (open loop, latency from the scheduled time) for latency claims, and locust
for load that one machine cannot produce. 429 (shed) and 504 (expired) count as failures with
their reason; the levels served are counted on every worker, merged on the master and
printed when the run ends.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter

from locust import FastHttpUser, constant_throughput, events, task

from bench.loadgen.client import v2_request
from bench.loadgen.payloads import DEFAULT_IMAGE_DIR, load_folder, synthetic
from bench.loadgen.scenario import Dials

_PAYLOADS: list = []
# Levels served by this process; workers ship theirs to the master with each stats report.
LEVELS: Counter = Counter()


@events.report_to_master.add_listener
def _ship_levels(client_id, data) -> None:
    data["sait_levels"] = dict(LEVELS)
    LEVELS.clear()


@events.worker_report.add_listener
def _merge_levels(client_id, data) -> None:
    LEVELS.update(data.get("sait_levels", {}))


@events.quitting.add_listener
def _print_levels(environment, **_kw) -> None:
    from locust.runners import WorkerRunner

    if isinstance(environment.runner, WorkerRunner):
        return
    total = sum(LEVELS.values())
    mix = ", ".join(f"{k} {v} ({100 * v / total:.1f}%)" for k, v in sorted(LEVELS.items())) or "none"
    print(f"levels served: {mix}")


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--budget-ms", type=float, default=None, help="latency_budget_ms on every request")
    parser.add_argument("--density", default=None, help="density on every request (0.6 or l060)")
    parser.add_argument("--min-accuracy", type=float, default=None, help="min_accuracy on every request")
    parser.add_argument("--payload", choices=("jpeg", "uint8"), default="jpeg", help="v2 payload kind")
    parser.add_argument("--model-name", default="deit_tiny_patch16_224", help="v2 model name")
    parser.add_argument("--images", default=str(DEFAULT_IMAGE_DIR), help="image folder (synthetic if absent)")
    parser.add_argument("--user-rps", type=float, default=1.0, help="requests per second per user")


def _payloads(options) -> list:
    # Loaded once per process; a worker reads its own copy of the image folder.
    if not _PAYLOADS:
        from pathlib import Path

        folder = Path(options.images)
        kind = options.payload
        _PAYLOADS.extend(load_folder(folder, kind=kind, limit=32) if folder.is_dir() else synthetic(count=8, kind=kind))
    return _PAYLOADS


def _dials(options) -> Dials:
    density = options.density
    try:
        density = float(density) if density is not None else None
    except ValueError:
        pass
    return Dials(name="locust", density=density, latency_budget_ms=options.budget_ms, min_accuracy=options.min_accuracy)


class _SaitUser(FastHttpUser):
    abstract = True

    def wait_time(self):
        return constant_throughput(self.environment.parsed_options.user_rps)(self)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.dials = _dials(options)
        self.payloads = itertools.cycle(_payloads(options))

    def _judge(self, response, level_of) -> None:
        """Mark sheds/expiries as failures with a reason; report the level served."""
        if response.status_code == 200:
            try:
                level = level_of(response)
            except (ValueError, KeyError, TypeError):
                response.failure("200 with an unreadable body")
                return
            response.success()
            LEVELS[level or "unknown"] += 1
        elif response.status_code == 429:
            response.failure("429 shed")
        elif response.status_code == 504:
            response.failure("504 expired in queue")
        else:
            response.failure(f"{response.status_code} {response.text[:120]}")


class NativeUser(_SaitUser):
    """POST /v1/classify with a JPEG body and the dials as query parameters."""

    @task
    def classify(self) -> None:
        payload = next(self.payloads)
        with self.client.post(
            "/v1/classify",
            params=self.dials.query(),
            data=payload.jpeg,
            headers={"Content-Type": "image/jpeg"},
            name="/v1/classify",
            catch_response=True,
        ) as response:
            self._judge(response, lambda r: r.json().get("level"))


class KServeUser(_SaitUser):
    """POST /v2/models/{m}/infer with the binary tensor extension (BYTES images or UINT8)."""

    def on_start(self) -> None:
        super().on_start()
        options = self.environment.parsed_options
        self.model, self.kind = options.model_name, options.payload
        meta = self.client.get(f"/v2/models/{self.model}", name="/v2/models/[m]").json()
        want = "UINT8" if self.kind == "uint8" else "BYTES"
        names = [i["name"] for i in meta.get("inputs", []) if i.get("datatype") == want]
        self.input_name = names[0] if names else meta["inputs"][0]["name"]
        # Ask only for the class indices, as JSON: the full probability vector is not needed.
        ints = [o["name"] for o in meta.get("outputs", []) if str(o.get("datatype", "")).startswith("INT")]
        self.output_name = ints[0] if ints else None

    @task
    def infer(self) -> None:
        path, headers, body = v2_request(
            self.dials,
            next(self.payloads),
            model=self.model,
            input_name=self.input_name,
            kind=self.kind,
            output_name=self.output_name,
        )
        with self.client.post(
            path, data=body, headers=headers, name="/v2/models/[m]/infer", catch_response=True
        ) as response:
            self._judge(response, _v2_level)


def _v2_level(response) -> str:
    length = response.headers.get("Inference-Header-Content-Length")
    raw = response.content[: int(length)] if length else response.content
    return (json.loads(raw).get("parameters") or {}).get("level", "")
