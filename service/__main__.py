"""`python -m service` / `sait-serve`: load, then serve until SIGTERM, then drain and exit 0.

A start-up problem (bad setting, no weights, unknown level) ends the process with exit code 2
and one line on stderr saying what to do, never a traceback.

SIGTERM/SIGINT drain: readiness turns false at once (the load balancer stops sending), new
inference requests get 503, requests already admitted finish (up to SAIT_DRAIN_TIMEOUT_S),
then uvicorn closes the listener and the process exits. A second SIGINT forces the exit.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

import uvicorn

from service.engine.core import Engine, StartupError
from service.settings import SettingsError, load_settings

log = logging.getLogger("service")


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first exit signal drains the engine before shutting down.

    Args:
        config: uvicorn config.
        engine: the loaded engine.
        drain_timeout_s: longest wait for admitted requests.
    """

    def __init__(self, config: uvicorn.Config, *, engine: Engine, drain_timeout_s: float):
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


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except SettingsError as exc:
        print(f"sait-serve: {exc}", file=sys.stderr)
        return 2
    # Logs go to stdout, so that a start-up failure leaves exactly one line on stderr.
    logging.basicConfig(
        level=settings.log_level.upper(), stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        engine = Engine.load(settings)
    except StartupError as exc:
        print(f"sait-serve: {exc}", file=sys.stderr)
        return 2
    from service.frontend.app import create_app
    from service.frontend.fast_path import FastInference

    app = FastInference(create_app(settings, engine=engine, exit_on_failure=True))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        access_log=False,
    )
    server = DrainingServer(config, engine=engine, drain_timeout_s=settings.drain_timeout_s)
    server.run()
    if engine.failed:
        print(f"sait-serve: warm-up failed: {engine.failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
