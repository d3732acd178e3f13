"""The uvicorn server of one front end: its first exit signal drains before it shuts down.

SIGTERM/SIGINT: readiness turns false at once (the load balancer stops sending), new inference
requests get 503, requests already admitted finish (up to SAIT_DRAIN_TIMEOUT_S), then uvicorn
closes the listener. A second SIGINT forces the exit. The same in both modes: with the engine
in this process, and in each API process of a multi-process server (where `engine` is the
client of the engine process and `pending()` counts this process's requests).
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import uvicorn

from service.settings import Settings

log = logging.getLogger(__name__)


def uvicorn_config(app, settings: Settings) -> uvicorn.Config:
    """How both modes run uvicorn for `app` (host and port are ignored when sockets are passed)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        access_log=False,
    )


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first exit signal drains the engine before shutting down.

    Args:
        config: uvicorn config.
        engine: the engine (or its client): `begin_drain()` and `pending()`.
        drain_timeout_s: longest wait for admitted requests.
    """

    def __init__(self, config: uvicorn.Config, *, engine, drain_timeout_s: float):
        super().__init__(config)
        self.engine = engine
        self.drain_timeout_s = drain_timeout_s
        self._draining = False

    def handle_exit(self, sig: int, frame) -> None:  # runs in the main thread (signal handler)
        if self._draining:
            if sig == signal.SIGINT:
                self.force_exit = True
            return
        self._draining = True
        log.info("received %s: draining (readiness false, new requests refused)", signal.Signals(sig).name)
        self.engine.begin_drain()
        threading.Thread(target=self._drain, name="drain", daemon=True).start()

    def _drain(self) -> None:
        give_up = time.monotonic() + self.drain_timeout_s
        while time.monotonic() < give_up and self.engine.pending() > 0:
            time.sleep(0.02)
        if self.engine.pending() > 0:
            log.warning(
                "drain timeout: %d requests and images still pending after %.0f s",
                self.engine.pending(),
                self.drain_timeout_s,
            )
        else:
            log.info("drained: no request in flight")
        self.should_exit = True
