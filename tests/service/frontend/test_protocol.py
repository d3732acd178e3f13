"""Connections within bounds (service.frontend.protocol), against a real server with small
limits: header size, URL length, timeouts, the connection cap, pipelining, parse errors,
lingering after an early answer, and clients that go away mid-body (issue items 2-4 and 8)."""

from __future__ import annotations

import json
import logging
import select
import socket
import time

import httpx
import pytest
from svc_helpers import JPEG, TINY, metric_value, running_server

from bench.loadgen.http1 import read_response

LIMITS = dict(
    max_header_bytes=4096,
    header_timeout_s=1.0,
    body_timeout_s=1.5,
    idle_timeout_s=1.0,
    max_connections=24,
    max_pipelined_requests=2,
    max_body_bytes=1_000_000,
    default_budget_ms=60_000,
)


@pytest.fixture(scope="module")
def limited():
    with running_server(**LIMITS) as s:
        yield s


def connect(server, timeout_s: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout_s)
    return sock


def closed_within(sock: socket.socket, limit_s: float) -> float | None:
    """Seconds until the server closes the connection (reading and dropping whatever comes), None if it stays open."""
    start = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - start < limit_s:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - start
    return None


def rejections(server, reason: str) -> float:
    return metric_value(httpx.get(f"{server.url}/metrics").text, "sait_http_rejections_total", reason=reason)


def still_serves(server) -> None:
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200


# -- item 3: bounded request heads ----------------------------------------------------------------
def test_a_header_streamed_without_end_gets_431_within_one_read(limited):
    before = rejections(limited, "header_too_large")
    with connect(limited) as sock:
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        sent = 0
        # The issue streamed 100 MB; the answer must come long before (it is read as soon as
        # it can be: what the client sends after it is read and dropped for a while).
        while sent < 50_000_000 and not select.select([sock], [], [], 0)[0]:
            sock.sendall(b"a" * 65536)
            sent += 65536
        status, headers, body = read_response(sock)
    assert status == 431, (status, sent)
    assert "SAIT_MAX_HEADER_BYTES" in json.loads(body)["error"]
    assert headers["connection"] == "close" and headers["content-type"] == "application/json"
    assert sent < 10_000_000  # kernel buffers on both sides hold a few MB; the exact bound is tested below
    assert rejections(limited, "header_too_large") == before + 1
    still_serves(limited)


def test_the_head_limit_holds_within_one_read():
    """Fed straight to the protocol: refused at the first read that passes the limit, however
    the parser buffers an unfinished header line."""
    proto, transport = protocol_on_fake_transport(max_header_bytes=4096)
    proto.data_received(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: ")
    reads = 0
    while not transport.written:
        proto.data_received(b"a" * 1000)
        reads += 1
        assert reads < 10
    assert reads == 5  # 4096 bytes are passed during the fifth read of 1000
    assert transport.written[0].startswith(b"HTTP/1.1 431 ")
    proto.data_received(b"a" * 100_000)  # lingering: read and dropped, nothing more answered
    assert len(transport.written) == 1 and transport.eof_written


def test_many_headers_over_the_limit_get_431(limited):
    headers = {f"x-h{i}": "v" * 100 for i in range(60)}  # 6 KB of complete header lines
    r = httpx.get(f"{limited.url}/v2", headers=headers)
    assert r.status_code == 431 and "error" in r.json()


def test_a_long_url_gets_a_json_414_and_is_counted(limited):
    before = rejections(limited, "uri_too_long")
    with connect(limited) as sock:  # httpx refuses to send a URL this long
        sock.sendall(b"GET /v2?q=" + b"a" * 65536 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, body = read_response(sock)
    assert status == 414 and "SAIT_MAX_HEADER_BYTES" in json.loads(body)["error"]
    assert headers["content-type"] == "application/json"
    assert rejections(limited, "uri_too_long") == before + 1


def test_malformed_http_gets_a_json_400_and_is_counted(limited):
    before = rejections(limited, "malformed")
    with connect(limited) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello")
        status, headers, body = read_response(sock)
    assert status == 400 and json.loads(body)["error"].startswith("malformed HTTP request")
    assert headers["connection"] == "close"
    assert rejections(limited, "malformed") == before + 1
    still_serves(limited)


# -- item 4: timeouts -----------------------------------------------------------------------------
def test_a_silent_connection_is_closed_after_the_idle_timeout(limited):
    with connect(limited) as sock:
        waited = closed_within(sock, 10)
    assert waited is not None and waited < LIMITS["idle_timeout_s"] + 1.0


def test_a_keep_alive_connection_is_closed_after_the_idle_timeout(limited):
    with connect(limited) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock)[0] == 200
        waited = closed_within(sock, 10)
    assert waited is not None and waited < LIMITS["idle_timeout_s"] + 1.0


def test_partial_headers_get_408_after_the_header_timeout(limited):
    before = rejections(limited, "header_timeout")
    with connect(limited) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        status, _, body = read_response(sock, limit_s=10)
        took = time.monotonic() - start
    assert status == 408 and "SAIT_HEADER_TIMEOUT_S" in json.loads(body)["error"]
    assert LIMITS["header_timeout_s"] - 0.1 < took < LIMITS["header_timeout_s"] + 1.0
    assert rejections(limited, "header_timeout") == before + 1


def test_a_stalled_upload_gets_408_from_its_handler_and_counts_as_bad_request(limited):
    text = httpx.get(f"{limited.url}/metrics").text
    before = metric_value(text, "sait_requests_total", api="v1", outcome="bad_request")
    with connect(limited) as sock:
        start = time.monotonic()
        sock.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 100000\r\n\r\n\xff\xd8"
        )
        status, _, body = read_response(sock, limit_s=10)
        took = time.monotonic() - start
        assert closed_within(sock, 5) is not None  # and the connection does not stay
    assert status == 408 and "SAIT_BODY_TIMEOUT_S" in json.loads(body)["error"]
    assert took < LIMITS["body_timeout_s"] + 1.0
    after = metric_value(
        httpx.get(f"{limited.url}/metrics").text, "sait_requests_total", api="v1", outcome="bad_request"
    )
    assert after == before + 1


def test_slowloris_connections_are_closed_while_normal_requests_succeed(limited):
    socks = []
    try:
        for i in range(12):
            sock = connect(limited)
            sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: 127.0.0.1\r\n" + (b"X-A: b\r\n" if i % 2 else b""))
            socks.append(sock)
        ok = httpx.post(f"{limited.url}/v1/classify", content=_jpeg(), headers=JPEG, timeout=30)
        assert ok.status_code == 200
        waits = [closed_within(s, 10) for s in socks]
    finally:
        for s in socks:
            s.close()
    assert all(w is not None and w < LIMITS["header_timeout_s"] + 1.5 for w in waits), waits


# -- connections and pipelining ------------------------------------------------------------------
def test_one_connection_over_the_cap_gets_503_then_serving_resumes(limited):
    before = rejections(limited, "connection_limit")
    socks = []
    try:
        # A few over the cap, opened well within the idle timeout (which would close the first ones).
        socks = [connect(limited) for _ in range(LIMITS["max_connections"] + 3)]
        time.sleep(0.3)
        refused = select.select(socks, [], [], 0)[0]
        assert 3 <= len(refused) <= 6  # the extras (and any earlier test's still closing)
        status, headers, body = read_response(refused[-1])
        assert status == 503 and "SAIT_MAX_CONNECTIONS" in json.loads(body)["error"]
        assert headers["retry-after"] == "1"
    finally:
        for s in socks:
            s.close()
    assert rejections(limited, "connection_limit") >= before + 1
    time.sleep(0.3)
    still_serves(limited)


def test_pipelined_requests_beyond_the_cap_are_dropped_and_the_connection_closes(limited):
    before = rejections(limited, "pipeline_limit")
    with connect(limited) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 10)
        statuses = []
        while True:
            status, _, _ = read_response(sock)
            if status == 0:
                break
            statuses.append(status)
    assert statuses == [200] * LIMITS["max_pipelined_requests"]
    assert rejections(limited, "pipeline_limit") == before + 1


def test_pipelining_within_the_cap_is_served_in_order(limited):
    with connect(limited) as sock:
        sock.sendall(
            b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /v2 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        first, second = read_response(sock), read_response(sock)
    assert first[0] == 200 and first[2] == b""
    assert second[0] == 200 and json.loads(second[2])["name"] == "sait-serve"


# -- item 8: an early answer reaches a client that is still sending -------------------------------
def test_a_body_over_the_limit_gets_413_not_a_reset(limited):
    r = httpx.post(f"{limited.url}/v1/classify", content=b"\xff" * 30_000_000, headers=JPEG, timeout=30)
    assert r.status_code == 413 and "SAIT_MAX_BODY_BYTES" in r.json()["error"]
    still_serves(limited)


def test_an_early_answer_drains_the_body_then_closes(limited):
    with connect(limited) as sock:
        sock.sendall(b"POST /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\nabc")
        status, _, body = read_response(sock)
        assert status == 405 and "error" in json.loads(body)
        waited = closed_within(sock, 10)
    assert waited is not None and waited < 3.5


def test_an_early_answer_keeps_the_connection_when_the_body_completes(limited):
    with connect(limited) as sock:
        sock.sendall(b"POST /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello")
        assert read_response(sock)[0] == 405
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock)[0] == 200


# -- item 2: clients that go away mid-body ---------------------------------------------------------
def test_clients_that_disconnect_mid_body_are_counted_without_a_traceback(limited, caplog):
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    keep = Keep(level=logging.WARNING)
    watched = [logging.getLogger(name) for name in ("uvicorn.error", "service", "")]
    for logger in watched:
        logger.addHandler(keep)
    try:
        text = httpx.get(f"{limited.url}/metrics").text
        before = metric_value(text, "sait_requests_total", outcome="client_disconnect")
        for path in ("/v1/classify", f"/v2/models/{TINY}/infer"):
            for _ in range(5):
                with connect(limited) as sock:
                    sock.sendall(
                        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                        f"Content-Length: 100000\r\n\r\n".encode()
                        + b"\xff" * 1000
                    )
                    time.sleep(0.05)
        deadline = time.monotonic() + 10
        while True:
            text = httpx.get(f"{limited.url}/metrics").text
            after = metric_value(text, "sait_requests_total", outcome="client_disconnect")
            if after == before + 10 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        for logger in watched:
            logger.removeHandler(keep)
    assert after == before + 10
    assert [r.getMessage() for r in records if r.levelno >= logging.ERROR or r.exc_info] == []
    still_serves(limited)


def _jpeg() -> bytes:
    from svc_helpers import jpeg_bytes

    return jpeg_bytes(seed=3)


class FakeTransport:
    """Enough of an asyncio transport for the protocol, recording what it writes."""

    def __init__(self):
        self.written: list[bytes] = []
        self.closed = False
        self.eof_written = False

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data):
        self.written.append(bytes(data))

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def can_write_eof(self):
        return True

    def write_eof(self):
        self.eof_written = True

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


def protocol_on_fake_transport(**limits):
    import asyncio

    import uvicorn
    from uvicorn.server import ServerState

    from service.frontend.http_metrics import HttpMetrics
    from service.frontend.protocol import ConnectionLimits, GuardedHttpProtocol

    async def app(scope, receive, send):
        pass

    loop = asyncio.new_event_loop()
    config = uvicorn.Config(app, log_level="critical")
    proto = GuardedHttpProtocol(
        config=config,
        server_state=ServerState(),
        app_state={},
        _loop=loop,
        limits=ConnectionLimits(**limits),
        metrics=HttpMetrics(),
    )
    transport = FakeTransport()
    proto.connection_made(transport)
    return proto, transport
