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
    def engine(self):
        return self.app.state.engine


@contextmanager
def running_server(ready_timeout_s: float = 120.0, **overrides):
    """create_app(Settings(...)) served by uvicorn in a thread; yields once /v2/health/ready is 200."""
    from service.frontend.app import create_app
    from service.frontend.fast_path import FastInference
    from service.settings import Settings

    port = free_port()
    values = dict(model=TINY, device="cpu", host="127.0.0.1", port=port, max_batch_size=8, max_queue_delay_ms=20)
    values.update(overrides)
    app = create_app(Settings(**values))
    # As `python -m service` serves it: the inference routes through service.frontend.fast_path.
    server = uvicorn.Server(uvicorn.Config(FastInference(app), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout_s
    try:
        with httpx.Client(base_url=url, timeout=2.0) as client:
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
