"""A lean HTTP/1.1 client for the load generator: keep-alive connections on a free list.

Why not httpx: its connection pool re-examines every connection for every request event
(httpcore 1.0: a pass over all connections, and for each idle one a count of them all), so a
client with hundreds of requests in flight spends more CPU the slower the server answers.
On a machine the generator shares with the server that is a trap: under overload the
generator takes a core, the server slows down, more requests pile up in flight, and the
generator falls seconds behind its schedule (measured: 0.3 cores at 72 req/s while the
server kept up, 0.95 once it did not). Here taking and returning a connection is O(1),
and a request is one write and a few reads on asyncio streams.

Supports what the load generator needs from sait-serve (or any HTTP/1.1 server): GET and
POST with a body, Content-Length or chunked responses, keep-alive, timeouts. Errors are
httpx's exception types, so callers handle this client and an httpx one alike.
"""

from __future__ import annotations

import asyncio
import collections
import json
from urllib.parse import urlencode, urlsplit

import httpx

_MAX_HEADER_LINES = 100


class Headers(dict):
    """Response headers, looked up case-insensitively (stored lower-case)."""

    def get(self, key: str, default=None):  # type: ignore[override]
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


class Response:
    """Status, headers and body of one answered request (the subset of httpx.Response used)."""

    def __init__(self, status_code: int, headers: Headers, content: bytes, path: str):
        self.status_code = status_code
        self.headers = headers
        self.content = content
        self.path = path

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self):
        return json.loads(self.content)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise httpx.HTTPError(f"{self.path} answered {self.status_code}: {self.text[:200]}")


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.reused = False

    def close(self) -> None:
        self.writer.close()


class Http1Client:
    """Keep-alive HTTP/1.1 requests to one server.

    Args:
        base_url: "http://host:port" (plain HTTP; the generator targets loopback).
        max_connections: connections open at most; a request beyond them waits for one.
        timeout_s: default per-request timeout (connect, send and receive together).
    """

    def __init__(self, base_url: str, *, max_connections: int = 100, timeout_s: float = 30.0):
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"Http1Client speaks plain http://host:port, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._host, self._port = parts.hostname, parts.port or 80
        self._host_header = parts.netloc
        self._timeout_s = timeout_s
        self._idle: collections.deque[_Connection] = collections.deque()
        self._slots = asyncio.Semaphore(max_connections)
        self.opened = 0  # connections opened so far (tests and diagnostics)

    async def get(
        self, path: str, *, params: dict | None = None, headers: dict | None = None, timeout: float | None = None
    ) -> Response:
        return await self.request("GET", path, params=params, headers=headers, timeout=timeout)

    async def post(
        self,
        path: str,
        *,
        params: dict | None = None,
        headers: dict | None = None,
        content: bytes = b"",
        timeout: float | None = None,
    ) -> Response:
        return await self.request("POST", path, params=params, headers=headers, content=content, timeout=timeout)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict | None = None,
        headers: dict | None = None,
        content: bytes = b"",
        timeout: float | None = None,
    ) -> Response:
        """Send one request and read its answer; httpx.TimeoutException or httpx.TransportError on failure."""
        target = f"{path}?{urlencode(params)}" if params else path
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host_header}", f"Content-Length: {len(content)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        timeout_s = self._timeout_s if timeout is None else timeout
        try:
            async with asyncio.timeout(timeout_s), self._slots:
                return await self._exchange(head, content, path)
        except TimeoutError:
            raise httpx.ReadTimeout(f"no answer from {self.base_url}{path} within {timeout_s:g} s") from None

    async def _exchange(self, head: bytes, body: bytes, path: str) -> Response:
        conn = self._idle.popleft() if self._idle else await self._open()
        if conn.reused:
            try:
                return await self._attempt(conn, head, body, path)
            except _ClosedBeforeAnswer:
                # The server closed an idle keep-alive connection as we reused it: it never
                # saw the request, so sending it once more on a fresh connection is safe.
                conn = await self._open()
        try:
            return await self._attempt(conn, head, body, path)
        except _ClosedBeforeAnswer:
            raise httpx.RemoteProtocolError(f"{self.base_url} closed the connection without answering") from None

    async def _attempt(self, conn: _Connection, head: bytes, body: bytes, path: str) -> Response:
        try:
            return await self._send_on(conn, head, body, path)
        except BaseException:
            conn.close()  # a half-read answer (or a cancelled one) leaves the stream unusable
            raise

    async def _open(self) -> _Connection:
        try:
            reader, writer = await asyncio.open_connection(self._host, self._port)
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {self.base_url}: {exc.strerror or exc}") from None
        self.opened += 1
        return _Connection(reader, writer)

    async def _send_on(self, conn: _Connection, head: bytes, body: bytes, path: str) -> Response:
        try:
            conn.writer.write(head)
            if body:
                conn.writer.write(body)
            await conn.writer.drain()
            status_line = await conn.reader.readline()
        except ConnectionError:
            raise _ClosedBeforeAnswer() from None
        if not status_line:
            raise _ClosedBeforeAnswer()
        try:
            status, headers = _parse_head(status_line, await _read_header_lines(conn.reader))
            content, to_eof = await _read_body(conn.reader, status, headers)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            raise httpx.RemoteProtocolError(
                f"bad answer from {self.base_url}{path}: {type(exc).__name__} {exc}"
            ) from None
        if to_eof or headers.get("connection", "").lower() == "close":
            conn.close()
        else:
            conn.reused = True
            self._idle.append(conn)
        return Response(status, headers, content, path)

    async def aclose(self) -> None:
        while self._idle:
            self._idle.popleft().close()

    async def __aenter__(self) -> Http1Client:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


class _ClosedBeforeAnswer(Exception):
    """The connection ended before the first byte of an answer."""


async def _read_header_lines(reader: asyncio.StreamReader) -> list[bytes]:
    lines = []
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n"):
            return lines
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        lines.append(line)
        if len(lines) > _MAX_HEADER_LINES:
            raise ValueError(f"more than {_MAX_HEADER_LINES} header lines")


def read_response(sock, limit_s: float = 10.0) -> tuple[int, Headers, bytes]:
    """One Content-Length response from a blocking socket (probes and tests that write raw
    requests): (status, headers, body); status 0 with an empty Headers when the connection
    closes, resets or stays silent for `limit_s` before a whole head arrives. Reads no byte
    past the response, so pipelined answers are read one call each."""
    sock.settimeout(limit_s)
    head = b""
    try:
        while not head.endswith(b"\r\n\r\n"):  # byte by byte: a head is a few hundred bytes
            byte = sock.recv(1)
            if not byte:
                return 0, Headers(), b""
            head += byte
        status_line, *lines = head[:-4].split(b"\r\n")
        status, headers = _parse_head(status_line, lines)
        left, body = int(headers.get("content-length", 0)), b""
        while left > 0:
            chunk = sock.recv(min(left, 65536))
            if not chunk:
                break
            body += chunk
            left -= len(chunk)
    except (ConnectionResetError, TimeoutError):
        return 0, Headers(), b""
    return status, headers, body


def _parse_head(status_line: bytes, header_lines: list[bytes]) -> tuple[int, Headers]:
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError(f"not an HTTP/1.x status line: {status_line[:60]!r}")
    headers = Headers()
    for line in header_lines:
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise ValueError(f"malformed header line {line[:60]!r}")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _read_body(reader: asyncio.StreamReader, status: int, headers: Headers) -> tuple[bytes, bool]:
    """(body, whether it ran to the end of the connection, which then cannot be reused)."""
    if status < 200 or status in (204, 304):
        return b"", False
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"x", 16)
            if size == 0:
                await _read_header_lines(reader)  # trailers, then the blank line
                return b"".join(chunks), False
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)  # the CRLF after each chunk
    length = headers.get("content-length")
    if length is not None:
        return await reader.readexactly(int(length)), False
    return await reader.read(), True
