"""The engine process: one Engine served to the API processes over a Unix socket.

It sees every arrival (each API process sends every request here), so the controller's load
signals are whole; it owns the device (the worker thread); it keeps the request accounting
(API processes send one `record` per answered request, and `/metrics` from any of them is
rendered here). The wire is service.engine.wire.

Lifecycle (`engine_main`, the target the supervisor spawns): load the model, listen, tell the
supervisor "loaded" (or the one-line start-up error, exit 2), warm up in a thread while the
API processes connect, tell them "ready". The supervisor's "stop" on the control pipe (sent
after the API processes have drained), or the pipe's end (the supervisor died): refuse new
work, finish what is queued, exit 0. Signals are ignored: a signal sent to the whole process
group (Ctrl-C in a terminal, `timeout`, `kill -- -PGID`) must not stop the engine before the
API processes have drained; the supervisor orders the shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from service.engine.core import Engine, StartupError
from service.engine.wire import (
    Outbox,
    SlotArena,
    dial_from_wire,
    error_to_wire,
    info_to_wire,
    read_frame,
    result_to_wire,
)
from service.errors import BadRequest, InternalError, ServiceError
from service.proc import exit_now, set_process_name
from service.settings import Settings

log = logging.getLogger(__name__)

# After the supervisor's "stop": the longest wait for the batch in progress, then for the worker.
STOP_S = 0.5


@dataclass(eq=False)
class _Connection:
    """One API process."""

    outbox: Outbox
    arena: SlotArena
    pid: int
    index: str
    tasks: set = field(default_factory=set)


class EngineServer:
    """Serves `engine` to API processes connecting on `path`."""

    def __init__(self, engine: Engine, *, path: str):
        self.engine = engine
        self.path = path
        self.connections: set[_Connection] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._handle, path=self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.outbox.writer.close()

    def state(self) -> dict:
        health = self.engine.health()
        return {
            "t": "state",
            "ready": health.ready,
            "live": health.live,
            "draining": self.engine.draining,
            "failed": self.engine.failed,
            "ladder": list(self.engine.describe().ladder),
        }

    def broadcast_state(self) -> None:
        msg = self.state()
        for conn in self.connections:
            conn.outbox.send(msg)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = None
        try:
            hello = await read_frame(reader)
            if hello.get("t") != "hello":
                raise ValueError(f"expected hello, got {hello.get('t')!r}")
            arena = SlotArena.attach(hello["arena"], slots=hello["slots"], slot_bytes=hello["slot_bytes"])
            conn = _Connection(outbox=Outbox(writer), arena=arena, pid=hello["pid"], index=str(hello["index"]))
            self.connections.add(conn)
            conn.outbox.send({"t": "info", "info": info_to_wire(self.engine.describe()), "state": self.state()})
            log.info("API process %d connected (arena %s, %d slots)", conn.pid, arena.name, arena.slots)
            while True:
                msg = await read_frame(reader)
                kind = msg["t"]
                if kind == "infer":
                    self._infer(conn, msg)
                elif kind == "records":
                    for api, level, outcome, duration_s, deadline_met in msg["records"]:
                        self.engine.record(
                            api=api,
                            level=level,
                            outcome=outcome,
                            duration_s=duration_s,
                            deadline_met=deadline_met,
                            process=conn.index,
                        )
                    self.engine.set_remote_inflight(conn, msg["inflight"])
                    self.engine.metrics.shm_free_slots.labels(process=conn.index).set(msg["free_slots"])
                elif kind == "call":
                    conn.outbox.send({"t": "reply", "id": msg["id"], "value": await self._call(msg)})
                else:
                    raise ValueError(f"unknown message {kind!r}")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the API process went away
        except Exception:
            log.exception("API process connection failed; closing it")
        finally:
            writer.close()
            if conn is not None:
                self._forget(conn)

    def _forget(self, conn: _Connection) -> None:
        self.connections.discard(conn)
        self.engine.set_remote_inflight(conn, 0)
        for task in conn.tasks:
            task.cancel()  # nobody waits for these answers any more
        conn.arena.close()
        log.info("API process %d disconnected", conn.pid)

    def _infer(self, conn: _Connection, msg: dict) -> None:
        self.engine.set_remote_inflight(conn, msg["inflight"])
        request_id = msg["id"]
        shape = self.engine.describe().input_size
        try:
            images = [conn.arena.read(slot, shape) for slot in msg["slots"]]
        except ValueError as exc:
            conn.outbox.send(error_to_wire(request_id, BadRequest(str(exc))))
            return
        task = asyncio.ensure_future(self._serve(conn, request_id, images, msg))
        conn.tasks.add(task)
        task.add_done_callback(conn.tasks.discard)

    async def _serve(self, conn: _Connection, request_id: int, images, msg: dict) -> None:
        try:
            result = await self.engine.infer(images, dial_from_wire(msg["dial"]), arrival_s=msg["arrival_s"])
            reply = result_to_wire(request_id, result)
        except ServiceError as exc:
            reply = error_to_wire(request_id, exc)
        except Exception as exc:  # a bug, not the client's: that request fails, the engine serves on
            log.exception("request %d failed", request_id)
            reply = error_to_wire(request_id, InternalError(f"internal error: {type(exc).__name__}"))
        conn.outbox.send(reply)

    async def _call(self, msg: dict):
        if msg["what"] == "metrics":
            body, content_type = await self.engine.render_metrics()
            return {"body": body, "content_type": content_type}
        if msg["what"] == "stats":
            return await self.engine.stats(msg["version"])
        if msg["what"] == "timeline":
            return await self.engine.timeline(msg["since_s"])
        raise ValueError(f"unknown call {msg['what']!r}")


def engine_main(settings_values: dict, socket_path: str, control) -> None:
    """The engine process (spawned by service.supervisor). `control` is a duplex pipe to the supervisor."""
    set_process_name("sait-engine")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    settings = Settings(**settings_values)
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s engine %(name)s: %(message)s",
    )
    try:
        engine = Engine.load(settings)
    except StartupError as exc:
        control.send(("error", str(exc)))
        sys.exit(2)
    import uvloop

    exit_now(uvloop.run(_serve(engine, settings, socket_path, control)))


async def _serve(engine: Engine, settings: Settings, socket_path: str, control) -> int:
    server = EngineServer(engine, path=socket_path)
    await server.start()
    info = engine.describe()
    control.send(("loaded", {"image_bytes": int(info.input_size[0] * info.input_size[1] * info.input_size[2])}))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def wait_for_stop() -> None:  # a thread: the pipe's recv blocks
        try:
            control.recv()  # "stop"
        except (EOFError, OSError):
            log.warning("the supervisor is gone: stopping")
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_stop, name="control", daemon=True).start()

    async def warm() -> None:
        try:
            await asyncio.to_thread(engine.warm)
        except Exception as exc:
            engine.failed = f"{type(exc).__name__}: {exc}"
            log.critical("warm-up failed, the server will not become ready: %s", engine.failed)
            stop.set()
        server.broadcast_state()

    warm_task = asyncio.create_task(warm())
    await stop.wait()
    engine.begin_drain()
    server.broadcast_state()
    # The supervisor stops the engine once the API processes are gone or their drain time is
    # up: what is still queued is for requests nobody waits for. The batch in progress may end.
    give_up = time.monotonic() + STOP_S
    while engine.pending() > 0 and time.monotonic() < give_up:
        await asyncio.sleep(0.02)
    warm_task.cancel()
    await server.stop()
    await engine.shutdown(STOP_S)
    with contextlib.suppress(OSError):
        os.unlink(socket_path)
    log.info("engine stopped")
    return 1 if engine.failed else 0
