"""Request bodies: the size limit, the body timeout, clients that go away, decompression."""

from __future__ import annotations

import asyncio
import gzip

import pytest
from starlette.requests import Request

from service.errors import BadRequest, ClientDisconnected, PayloadTooLarge, RequestTimeout
from service.frontend.body import decompress, read_body


def request_receiving(messages: list[dict], *, delay_s: float = 0.0, headers=()) -> Request:
    """A Starlette request whose body arrives as `messages`, each after `delay_s`."""
    queue = list(messages)

    async def receive():
        await asyncio.sleep(delay_s)
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    return Request({"type": "http", "method": "POST", "headers": list(headers)}, receive)


def test_read_body_in_pieces():
    parts = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"c"}]
    assert asyncio.run(read_body(request_receiving(parts), limit=10)) == b"abc"


def test_read_body_limits_size_time_and_disconnects():
    endless = [{"type": "http.request", "body": b"x" * 10, "more_body": True}] * 100
    with pytest.raises(PayloadTooLarge, match="SAIT_MAX_BODY_BYTES"):
        asyncio.run(read_body(request_receiving(endless), limit=50))
    with pytest.raises(PayloadTooLarge):  # refused from the header, before a byte is read
        asyncio.run(read_body(request_receiving([], headers=[(b"content-length", b"51")]), limit=50))
    with pytest.raises(BadRequest, match="Content-Length"):
        asyncio.run(read_body(request_receiving([], headers=[(b"content-length", b"9" * 5000 + b"x")]), limit=50))
    with pytest.raises(RequestTimeout, match="SAIT_BODY_TIMEOUT_S") as info:
        asyncio.run(read_body(request_receiving(endless, delay_s=0.05), limit=10_000, timeout_s=0.2))
    assert info.value.status == 408 and info.value.outcome == "bad_request"
    gone = [{"type": "http.request", "body": b"x" * 10, "more_body": True}]
    with pytest.raises(ClientDisconnected) as info:
        asyncio.run(read_body(request_receiving(gone), limit=100))
    assert info.value.outcome == "client_disconnect"


def test_decompress_guards_against_zip_bombs():
    assert decompress(gzip.compress(b"x" * 100), "gzip", limit=1000) == b"x" * 100
    with pytest.raises(PayloadTooLarge):
        decompress(gzip.compress(b"\0" * 2_000_000), "gzip", limit=1_000_000)
    with pytest.raises(BadRequest, match="Content-Encoding"):
        decompress(b"x", "br", limit=10)
