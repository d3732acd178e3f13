"""The engine's client interface, for an engine in another process (service.engine.server).

`EngineClient` has the methods the front end calls on an in-process `Engine` (describe,
health, admit, infer, request_started, request_finished, stats, render_metrics, timeline, and the
lifecycle: open, warm, begin_drain, pending, shutdown), so the handlers do not know which they
hold. It lives on the API process's event loop: one connection to the engine, one reader task
that settles the waiting requests, and the shared-memory arena whose slots carry the pixels.

If the engine process goes away, every waiting request fails with 503 at once, readiness turns
false, and new requests get 503 until the supervisor, which sees the engine exit, stops this
process (Kubernetes then restarts the pod).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import threading
import time

import torch

from service.dial import Dial
from service.engine.core import Health, ModelInfo, RequestResult
from service.engine.wire import (
    Outbox,
    SlotArena,
    dial_to_wire,
    error_from_wire,
    info_from_wire,
    read_frame,
    result_from_wire,
)
from service.errors import Shed, Unavailable

log = logging.getLogger(__name__)

ENGINE_GONE = "the engine process is gone; this server cannot serve (it is being restarted)"
# Longest a request's accounting record waits for a message to ride along with.
RECORD_DELAY_S = 0.25


class EngineClient:
    """Talks to the engine process on `socket_path`; pixels go through `arena`.

    Args:
        socket_path: the engine's Unix socket.
        arena: this API process's shared-memory slots (created by the supervisor).
        index: this API process's number (0..N-1), for the per-process metrics.
        connect_timeout_s: how long `open` keeps trying to reach the engine.
    """

    def __init__(self, *, socket_path: str, arena: SlotArena, index: int = 0, connect_timeout_s: float = 60.0):
        self.socket_path = socket_path
        self.arena = arena
        self.index = index
        self.connect_timeout_s = connect_timeout_s
        self.failed: str | None = None
        self.draining = False
        self.inflight = 0
        self._info: ModelInfo | None = None
        self._state: dict = {"ready": False, "live": True, "draining": False, "failed": None, "ladder": []}
        self._connected = False
        self._outbox: Outbox | None = None
        self._reader_task: asyncio.Task | None = None
        self._waiting: dict[int, asyncio.Future] = {}
        self._records: list[list] = []  # answered requests not yet told to the engine
        self._record_timer: asyncio.TimerHandle | None = None
        self._ids = itertools.count()
        self._settled = threading.Event()  # ready or failed: what warm() waits for

    # -- lifecycle -------------------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect to the engine and read its description (it is up: the supervisor waited for it)."""
        give_up = time.monotonic() + self.connect_timeout_s
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.socket_path)
                break
            except OSError:
                if time.monotonic() > give_up:
                    raise
                await asyncio.sleep(0.05)
        self._outbox = Outbox(writer)
        self._outbox.send(
            {
                "t": "hello",
                "arena": self.arena.name,
                "slots": self.arena.slots,
                "slot_bytes": self.arena.slot_bytes,
                "pid": os.getpid(),
                "index": self.index,
            }
        )
        welcome = await read_frame(reader)
        self._info = info_from_wire(welcome["info"])
        self._connected = True
        self._apply_state(welcome["state"])
        self._reader_task = asyncio.create_task(self._read(reader))

    def warm(self) -> None:
        """Block (in a thread) until the engine is ready; raise if its warm-up failed, it went away,
        or this client was shut down meanwhile (the thread must not outlive the process's loop)."""
        self._settled.wait()
        if self.failed:
            raise RuntimeError(self.failed)
        if not self._connected:
            raise RuntimeError("the engine process went away before it was ready")

    def begin_drain(self) -> None:
        self.draining = True

    def pending(self) -> int:
        return self.inflight

    async def shutdown(self, timeout_s: float) -> None:
        if self._connected:
            self._flush_records()
            await self._outbox.drain()
        self._settled.set()  # a warm() still waiting returns
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._outbox is not None:
            self._outbox.writer.close()
        self._connected = False

    # -- the client interface ------------------------------------------------------------------------
    def describe(self) -> ModelInfo:
        return self._info

    def health(self) -> Health:
        live = self._state["live"] and self.failed is None
        ready = self._connected and self._state["ready"] and not self._state["draining"] and not self.draining
        return Health(live=live, ready=ready and live)

    def admit(self) -> None:
        if self.draining or self._state["draining"]:
            raise Unavailable("server is shutting down; not accepting new requests")
        if not self._connected:
            raise Unavailable(ENGINE_GONE)
        if not self._state["ready"]:
            raise Unavailable("model is not ready yet (loading, warming up or profiling)")

    def request_started(self) -> None:
        self.inflight += 1

    def request_finished(
        self, *, api: str, level: str | None, outcome: str, arrival_s: float, deadline_met: bool | None = None
    ) -> None:
        self.inflight -= 1
        if not self._connected:
            return
        # Records ride along with the next message to the engine, or go after RECORD_DELAY_S:
        # at a low rate a message of their own would wake the engine once more per request.
        # Order is kept, so a metrics call sent later sees every record sent before it.
        self._records.append([api, level, outcome, time.perf_counter() - arrival_s, deadline_met])
        if self._record_timer is None:
            self._record_timer = asyncio.get_running_loop().call_later(RECORD_DELAY_S, self._flush_records)

    async def infer(self, images: list[torch.Tensor], dial: Dial, *, arrival_s: float) -> RequestResult:
        if not self._connected:
            raise Unavailable(ENGINE_GONE)
        slots = self.arena.put(images)
        if slots is None:
            raise Shed(
                f"{len(images)} images do not fit the {self.arena.free} free shared-memory slots of this API "
                f"process (SAIT_SHM_SLOTS={self.arena.slots})",
                retry_after_s=1.0,
            )
        request_id = next(self._ids)
        fut = self._waiting[request_id] = asyncio.get_running_loop().create_future()
        try:
            self._send(
                {
                    "t": "infer",
                    "id": request_id,
                    "slots": slots,
                    "arrival_s": arrival_s,
                    "dial": dial_to_wire(dial),
                    "inflight": self.inflight,
                }
            )
            msg = await fut
        finally:
            # The engine copied the pixels when the message arrived, long before any answer.
            self._waiting.pop(request_id, None)
            self.arena.release(slots)
        if msg["t"] == "error":
            raise error_from_wire(msg)
        return result_from_wire(msg, arrival_s=arrival_s, now_s=time.perf_counter(), top_k=dial.top_k)

    async def stats(self, version: str) -> dict:
        return await self._call("stats", version=version)

    async def render_metrics(self) -> tuple[bytes, str]:
        value = await self._call("metrics")
        return value["body"], value["content_type"]

    async def timeline(self, since_s: float | None = None) -> list[dict]:
        return await self._call("timeline", since_s=since_s)

    # -- the connection ------------------------------------------------------------------------------
    def _send(self, msg: dict) -> None:
        self._flush_records()
        self._outbox.send(msg)

    def _flush_records(self) -> None:
        if self._record_timer is not None:
            self._record_timer.cancel()
            self._record_timer = None
        if self._records and self._connected:
            self._outbox.send(
                {"t": "records", "records": self._records, "inflight": self.inflight, "free_slots": self.arena.free}
            )
        self._records = []

    async def _call(self, what: str, **args):
        if not self._connected:
            raise Unavailable(ENGINE_GONE)
        request_id = next(self._ids)
        fut = self._waiting[request_id] = asyncio.get_running_loop().create_future()
        self._send({"t": "call", "id": request_id, "what": what, **args})
        try:
            msg = await fut
        finally:
            self._waiting.pop(request_id, None)
        return msg["value"]

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                msg = await read_frame(reader)
                if msg["t"] == "state":
                    self._apply_state(msg)
                    continue
                fut = self._waiting.get(msg["id"])
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reading from the engine failed")
        self._lost()

    def _lost(self) -> None:
        if not self._connected:
            return
        self._connected = False
        if self.draining:  # the supervisor stops the engine at the end of the drain: expected
            log.info("the engine process stopped: answering 503 until this process exits")
        else:
            log.error("lost the engine process: answering 503 until this process is stopped")
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(Unavailable(ENGINE_GONE))
        self._settled.set()

    def _apply_state(self, msg: dict) -> None:
        self._state = {k: msg[k] for k in ("ready", "live", "draining", "failed", "ladder")}
        if msg["failed"]:
            self.failed = msg["failed"]
        if self._info is not None and tuple(msg["ladder"]) != self._info.ladder:
            from dataclasses import replace

            self._info = replace(self._info, ladder=tuple(msg["ladder"]))
        if msg["ready"] or msg["failed"]:
            self._settled.set()


def shm_slots_default(queue_limit: int, api_processes: int, max_batch_size: int) -> int:
    """Slots per API process when SAIT_SHM_SLOTS is 0: its share of the queue, twice over, and at
    least two full batches (a burst may land on one process)."""
    return max(2 * max_batch_size, math.ceil(2 * queue_limit / max(api_processes, 1)))
