"""`python -m service` / `sait-serve`: load, then serve until SIGTERM, then drain and exit 0.

With SAIT_API_PROCESSES=0 (the default on a CPU) this process loads the engine and serves HTTP
itself; with N >= 1 it is the supervisor of an engine process and N API processes
(service.supervisor; docs/architecture.md). A start-up problem (bad setting, no weights, unknown
level) ends the process with exit code 2 and one line on stderr saying what to do, never a
traceback.

SIGTERM/SIGINT drain: readiness turns false at once (the load balancer stops sending), new
inference requests get 503, requests already admitted finish, and the process exits within
SAIT_DRAIN_TIMEOUT_S (+ about a second) whatever clients do (service.frontend.server). A
second SIGINT forces the exit.
"""

from __future__ import annotations

import logging
import sys

from service import supervisor
from service.engine.core import Engine, StartupError
from service.frontend.server import build_server
from service.proc import exit_now
from service.settings import SettingsError, load_settings
from service.supervisor import resolve_api_processes

log = logging.getLogger("service")


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
    api_processes = resolve_api_processes(settings)
    if api_processes > 0:
        exit_now(supervisor.run(settings, api_processes))
    try:
        engine = Engine.load(settings)
    except StartupError as exc:
        print(f"sait-serve: {exc}", file=sys.stderr)
        return 2
    try:  # limits, TLS, keys, the bounded drain: service.frontend.server
        server = build_server(settings, engine=engine, exit_on_failure=True)
    except SettingsError as exc:
        print(f"sait-serve: {exc}", file=sys.stderr)
        return 2
    server.run()
    if engine.failed:
        print(f"sait-serve: warm-up failed: {engine.failed}", file=sys.stderr)
    exit_now(1 if engine.failed else 0)  # within the drain's bound: no slow interpreter teardown


if __name__ == "__main__":
    sys.exit(main())
