"""The HTTP server around the app: uvicorn with the connection limits, optional TLS and API
keys, the metrics port, and a SIGTERM drain and shutdown that end within SAIT_DRAIN_TIMEOUT_S.

Every process that serves the app builds its server here, so that the limits are the same
whoever runs it:

    server = build_server(settings, engine=engine, exit_on_failure=True)
    server.run()                      # until SIGTERM (or server.run(sockets=[...]))

Shutdown (SIGTERM/SIGINT): readiness turns false at once and new inference requests get 503;
admitted requests run until none is left or SAIT_DRAIN_TIMEOUT_S after the signal, whichever
comes first. Then the listeners and idle connections close; a request still unanswered when
the time is up is answered 503 (JSON) and its handler cancelled, and the engine gets CLOSE_S
to stop its worker. So the process exits within SAIT_DRAIN_TIMEOUT_S plus about a second,
whatever its clients do (a stalled upload included). A second SIGINT exits at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import socket
import ssl
import threading
import time

import uvicorn
from fastapi import FastAPI
from starlette.responses import JSONResponse

from service.frontend.app import create_app, render_metrics
from service.frontend.fast_path import FastInference
from service.frontend.guard import Guard, load_api_keys
from service.frontend.protocol import ConnectionLimits, GuardedHttpProtocol
from service.settings import Settings, SettingsError

log = logging.getLogger("service")

# Once the drain's time is up: for cancelled handlers to end, and for the engine's worker.
CLOSE_S = 0.5


def build_app(settings: Settings, *, engine=None, exit_on_failure: bool = False, process: int = 0):
    """(the FastAPI app, the ASGI app to serve): the fast path, and the Guard when a Host list
    or API keys are configured. Raises SettingsError (one line) for an unusable keys file."""
    app = create_app(settings, engine=engine, exit_on_failure=exit_on_failure, process=process)
    asgi = FastInference(app)
    hosts = settings.host_names
    keys = load_api_keys(settings.api_keys_file) if settings.api_keys_file else None
    if hosts is not None or keys is not None:
        asgi = Guard(asgi, hosts=hosts, keys=keys, metrics=app.state.http_metrics)
    return app, asgi


def build_server(
    settings: Settings,
    *,
    engine=None,
    exit_on_failure: bool = False,
    process: int = 0,
    metrics_socket: socket.socket | None = None,
) -> SaitServer:
    """The server for `settings` (see the module's docstring); SettingsError for unusable TLS
    files or keys.

    Args:
        engine: the engine, or its client in an API process (None: loaded by the app).
        exit_on_failure: see service.frontend.app.create_app.
        process: the API process's index (0 when one process serves).
        metrics_socket: a bound socket for SAIT_METRICS_PORT (API processes share the port
            with SO_REUSEPORT); None: the server binds it.
    """
    app, asgi = build_app(settings, engine=engine, exit_on_failure=exit_on_failure, process=process)
    protocol = functools.partial(
        GuardedHttpProtocol, limits=ConnectionLimits.from_settings(settings), metrics=app.state.http_metrics
    )
    config = _config(settings, asgi, protocol, port=settings.port, main=True)
    metrics_config = None
    if settings.metrics_port:
        # Plain HTTP and no key, whatever the main port does: bind it where only Prometheus reaches.
        metrics_config = _config(settings, MetricsOnly(app), protocol, port=settings.metrics_port, main=False)
    return SaitServer(
        config,
        app=app,
        drain_timeout_s=settings.drain_timeout_s,
        metrics_config=metrics_config,
        metrics_socket=metrics_socket,
    )


def _config(settings: Settings, asgi, protocol, *, port: int, main: bool) -> uvicorn.Config:
    """The main port's config (TLS when configured, the app's lifespan), or the metrics port's."""
    config = uvicorn.Config(
        asgi,
        host=settings.host,
        port=port,
        log_level=settings.log_level,
        access_log=False,
        http=protocol,
        ws="none",
        lifespan="auto" if main else "off",  # the metrics listener lives within the main one's lifespan
        server_header=False,
        ssl_certfile=settings.tls_cert_file if main else None,
        ssl_keyfile=settings.tls_key_file if main else None,
    )
    try:
        config.load()  # builds the TLS context: a bad file is a start-up error, not a traceback
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(
            f"invalid setting SAIT_TLS_CERT_FILE/SAIT_TLS_KEY_FILE: cannot load "
            f"{settings.tls_cert_file} / {settings.tls_key_file}: {exc}"
        ) from None
    return config


class MetricsOnly:
    """ASGI app of the metrics port: GET /metrics (the same exposition as the main port's), else 404."""

    def __init__(self, app: FastAPI):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            response = await render_metrics(self.app)
        else:
            response = JSONResponse({"error": "Not Found: this port serves GET /metrics only"}, status_code=404)
        await response(scope, receive, send)


class SaitServer(uvicorn.Server):
    """uvicorn.Server whose first exit signal drains the engine, and whose shutdown ends by
    the drain's deadline (see the module's docstring).

    Args:
        config: the main port's uvicorn config.
        app: the FastAPI app (its state holds the engine and the HTTP metrics).
        drain_timeout_s: SAIT_DRAIN_TIMEOUT_S.
        metrics_config: the metrics port's config, if it has one.
        metrics_socket: its socket, when the caller bound it.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        app: FastAPI,
        drain_timeout_s: float,
        metrics_config: uvicorn.Config | None,
        metrics_socket: socket.socket | None = None,
    ):
        super().__init__(config)
        self.app = app
        self.drain_timeout_s = drain_timeout_s
        self.metrics_config = metrics_config
        self.metrics_socket = metrics_socket
        self.metrics_server: uvicorn.Server | None = None
        self.deadline: float | None = None  # time.monotonic() by which the shutdown is over

    # -- signals and the drain ------------------------------------------------------------------
    def handle_exit(self, sig: int, frame) -> None:  # runs in the main thread (signal handler)
        if self.deadline is not None:
            if sig == signal.SIGINT:
                self.force_exit = True
            return
        self.deadline = time.monotonic() + self.drain_timeout_s
        log.info("received %s: draining (readiness false, new requests refused)", signal.Signals(sig).name)
        engine = getattr(self.app.state, "engine", None)
        if engine is not None:
            engine.begin_drain()
        threading.Thread(target=self._drain, args=(engine,), name="drain", daemon=True).start()

    def _drain(self, engine) -> None:
        while engine is not None and engine.pending() > 0 and time.monotonic() < self.deadline:
            time.sleep(0.02)
        if engine is not None and engine.pending() > 0:
            log.warning(
                "drain timeout: %d requests and images still pending after %.0f s",
                engine.pending(),
                self.drain_timeout_s,
            )
        else:
            log.info("drained: no request in flight")
        self.should_exit = True

    # -- start and stop ---------------------------------------------------------------------------
    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.metrics_config is not None:
            self.metrics_server = uvicorn.Server(self.metrics_config)
            self.metrics_server.lifespan = self.metrics_config.lifespan_class(self.metrics_config)
            await self.metrics_server.startup(sockets=[self.metrics_socket] if self.metrics_socket else None)

    async def shutdown(self, sockets=None) -> None:
        if self.deadline is None:  # stopped without a signal (should_exit set by a caller)
            self.deadline = time.monotonic() + self.drain_timeout_s
        servers = [self] + ([self.metrics_server] if self.metrics_server is not None else [])
        states = [s.server_state for s in servers]
        for s in servers:
            for listener in s.servers:
                listener.close()
        for sock in sockets or []:
            sock.close()
        for state in states:
            for connection in list(state.connections):
                connection.shutdown()  # idle ones close now, busy ones after their answer
        while not self.force_exit and any(s.connections or s.tasks for s in states):
            if time.monotonic() >= self.deadline:
                await self._abort(states)
                break
            await asyncio.sleep(0.05)
        self.app.state.close_timeout_s = max(CLOSE_S, self.deadline - time.monotonic())
        if not self.force_exit:
            await self.lifespan.shutdown()

    async def _abort(self, states) -> None:
        """Out of time: answer 503 where no answer began, close, cancel the handlers."""
        left = sum(len(s.connections) for s in states)
        log.warning("shutdown: %d connections still open after %.0f s; answering 503", left, self.drain_timeout_s)
        for state in states:
            for connection in list(state.connections):
                abort = getattr(connection, "abort", None)
                if abort is not None:
                    abort(503, "the server shut down before this request was answered")
                else:
                    connection.transport.close()
        tasks = [t for s in states for t in s.tasks]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_S)
