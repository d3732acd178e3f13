"""One API process of a multi-process server: uvicorn and the HTTP front end, over the engine's client.

Spawned by service.supervisor with the port (this process listens on it with SO_REUSEPORT, as
every API process does: the kernel hands each new connection to one of them), the engine's
socket path and this process's shared-memory arena. The app is the same as in one-process
mode; only the engine object behind it differs (service.engine.client.EngineClient).
"""

from __future__ import annotations

import logging
import socket
import sys

from service.engine.client import EngineClient
from service.engine.wire import SlotArena
from service.frontend.server import build_server
from service.proc import die_with_parent, exit_now, set_process_name
from service.settings import Settings


def reuseport_socket(host: str, port: int, *, listening: bool) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT.

    The supervisor binds one without listening: it reserves the port (an error, or port 0's
    choice, is known before any child starts) and takes no connections; each API process binds
    and listens on its own, and the kernel balances new connections over the listeners (with
    one shared listening socket, one event loop would accept a whole burst by itself).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        if listening:
            sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def api_main(
    settings_values: dict, port: int, socket_path: str, arena_name: str, slots: int, slot_bytes: int, index: int
) -> None:
    set_process_name(f"sait-api-{index}")
    die_with_parent()
    settings = Settings(**settings_values)
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=sys.stdout,
        format=f"%(asctime)s %(levelname)s api-{index} %(name)s: %(message)s",
    )
    arena = SlotArena.attach(arena_name, slots=slots, slot_bytes=slot_bytes)
    client = EngineClient(socket_path=socket_path, arena=arena, index=index)
    # Every API process listens on the metrics port too (SO_REUSEPORT, as on the main one): a
    # scrape reads the engine's metrics, which count every process, and this process's HTTP ones.
    metrics_socket = (
        reuseport_socket(settings.host, settings.metrics_port, listening=True) if settings.metrics_port else None
    )
    server = build_server(settings, engine=client, process=index, metrics_socket=metrics_socket)
    server.run(sockets=[reuseport_socket(settings.host, port, listening=True)])
    exit_now(0)
