"""Helpers for the service tests: a real uvicorn server on a free loopback port, images."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import numpy as np
import uvicorn
from PIL import Image

TINY = "vit_tiny_test"
# The body limit of the HTTP tests' server (tests/service/frontend/conftest.py).
MAX_BODY = 2_000_000
# /v1/classify takes image, octet-stream or multipart bodies only.
JPEG = {"Content-Type": "image/jpeg"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Running:
    url: str
    hostport: str
    app: object
    server: uvicorn.Server

    @property
    def port(self) -> int:
        return int(self.hostport.rsplit(":", 1)[1])

    @property
    def engine(self):
        return self.app.state.engine


@contextmanager
def running_server(ready_timeout_s: float = 120.0, **overrides):
    """The app of Settings(...) served in a thread as `python -m service` serves it (the fast
    path, the connection limits, the Guard when configured: service.frontend.server); yields
    once /v2/health/ready is 200."""
    from service.frontend.server import build_server
    from service.settings import Settings

    port = free_port()
    values = dict(
        model=TINY,
        device="cpu",
        host="127.0.0.1",
        port=port,
        max_batch_size=8,
        max_queue_delay_ms=20,
        log_level="warning",
    )
    values.update(overrides)
    server = build_server(Settings(**values))
    app = server.app
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    scheme = "https" if values.get("tls_cert_file") else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout_s
    try:
        with httpx.Client(base_url=url, timeout=2.0, verify=False) as client:
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server on port {port} not ready after {ready_timeout_s} s")
                if not thread.is_alive():
                    raise RuntimeError("server thread died during start-up")
                try:
                    if client.get("/v2/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        yield Running(url=url, hostport=f"127.0.0.1:{port}", app=app, server=server)
    finally:
        server.should_exit = True
        thread.join(30)


def jpeg_bytes(width: int = 320, height: int = 240, seed: int = 0, quality: int = 90) -> bytes:
    """A noisy (so not trivially compressible) RGB JPEG."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def metric_value(text: str, name: str, **labels) -> float:
    """Sum of the samples `name{labels...}` in a Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total
