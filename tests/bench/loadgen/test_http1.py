"""The load generator's HTTP/1.1 client, against scripted servers on real loopback sockets."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from bench.loadgen.http1 import Http1Client


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict, bytes] | None:
    """One request off the socket: (request line, lower-case headers, body); None at EOF."""
    line = await reader.readline()
    if not line:
        return None
    headers = {}
    while (h := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = h.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return line.decode().strip(), headers, body


def answer(status: int, body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nX-Mixed-Case: yes\r\n{extra}\r\n".encode() + body


async def serving(on_conn):
    """Start a server on a free loopback port; on_conn(reader, writer, seen) handles a connection."""
    seen: list = []

    async def handle(reader, writer):
        try:
            await on_conn(reader, writer, seen)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", seen


async def echo_forever(reader, writer, seen):
    while (req := await read_request(reader)) is not None:
        seen.append(req)
        writer.write(answer(200, b'{"echo": %d}' % len(req[2])))
        await writer.drain()


def test_keep_alive_reuses_one_connection_and_sends_what_it_is_given():
    async def go():
        server, url, seen = await serving(echo_forever)
        async with server, Http1Client(url, max_connections=4) as client:
            responses = [
                await client.post(
                    "/v2/x/infer",
                    params={"top_k": 3},
                    content=b"abc" * i,
                    headers={"Inference-Header-Content-Length": "3"},
                )
                for i in range(5)
            ]
            return responses, seen, client.opened

    responses, seen, opened = asyncio.run(go())
    assert opened == 1  # sequential requests share one keep-alive connection
    assert [r.json()["echo"] for r in responses] == [0, 3, 6, 9, 12]
    assert all(r.status_code == 200 and r.headers.get("x-mixed-case") == "yes" for r in responses)
    assert responses[0].headers["X-MIXED-CASE"] == "yes"
    line, headers, body = seen[2]
    assert line == "POST /v2/x/infer?top_k=3 HTTP/1.1"
    assert headers["inference-header-content-length"] == "3" and body == b"abcabc"


def test_concurrent_requests_stay_within_max_connections():
    async def slow_echo(reader, writer, seen):
        while (req := await read_request(reader)) is not None:
            await asyncio.sleep(0.02)
            writer.write(answer(200, req[2]))
            await writer.drain()

    async def go():
        server, url, _ = await serving(slow_echo)
        async with server, Http1Client(url, max_connections=4) as client:
            responses = await asyncio.gather(*(client.post("/p", content=str(i).encode()) for i in range(20)))
            return responses, client.opened

    responses, opened = asyncio.run(go())
    assert [r.text for r in responses] == [str(i) for i in range(20)]
    assert opened <= 4


def test_chunked_answer_is_reassembled():
    async def chunked(reader, writer, seen):
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n6;ext=1\r\npedia \r\n0\r\n\r\n"
        )
        await writer.drain()

    async def go():
        server, url, _ = await serving(chunked)
        async with server, Http1Client(url) as client:
            return await client.get("/")

    assert asyncio.run(go()).text == "Wikipedia "


def test_a_keep_alive_connection_the_server_closed_is_replaced_once():
    async def one_answer_then_close(reader, writer, seen):
        req = await read_request(reader)
        seen.append(req)
        writer.write(answer(200, b"first"))  # no "Connection: close": then closes anyway (idle timeout)
        await writer.drain()

    async def go():
        server, url, seen = await serving(one_answer_then_close)
        async with server, Http1Client(url) as client:
            first = await client.get("/a")
            await asyncio.sleep(0.05)  # the server has closed the connection by now
            second = await client.get("/b")
            return first, second, client.opened, seen

    first, second, opened, seen = asyncio.run(go())
    assert (first.text, second.text, opened) == ("first", "first", 2)
    assert [s[0].split()[1] for s in seen] == ["/a", "/b"]  # /b reached the server exactly once


def test_failures_are_httpx_exceptions():
    async def silent(reader, writer, seen):
        await read_request(reader)
        await asyncio.sleep(5)

    async def hang_up(reader, writer, seen):
        await read_request(reader)

    async def garbage(reader, writer, seen):
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()

    async def go(on_conn, **kw):
        server, url, _ = await serving(on_conn)
        async with server, Http1Client(url, **kw) as client:
            return await client.get("/")

    start = time.perf_counter()
    with pytest.raises(httpx.TimeoutException, match="within 0.2 s"):
        asyncio.run(go(silent, timeout_s=0.2))
    assert time.perf_counter() - start < 3
    with pytest.raises(httpx.RemoteProtocolError, match="without answering"):
        asyncio.run(go(hang_up))
    with pytest.raises(httpx.RemoteProtocolError, match="status line"):
        asyncio.run(go(garbage))


def test_connection_refused_is_a_connect_error():
    async def go():
        server, url, _ = await serving(echo_forever)
        server.close()
        await server.wait_closed()
        async with Http1Client(url) as client:
            return await client.get("/")

    with pytest.raises(httpx.ConnectError, match="cannot connect"):
        asyncio.run(go())


def test_raise_for_status_and_plain_http_only():
    async def not_found(reader, writer, seen):
        await read_request(reader)
        writer.write(answer(404, b'{"error": "unknown model"}'))
        await writer.drain()

    async def go():
        server, url, _ = await serving(not_found)
        async with server, Http1Client(url) as client:
            return await client.get("/v2/models/nope")

    response = asyncio.run(go())
    with pytest.raises(httpx.HTTPError, match="404"):
        response.raise_for_status()
    with pytest.raises(ValueError, match="plain http"):
        Http1Client("https://127.0.0.1:1")
