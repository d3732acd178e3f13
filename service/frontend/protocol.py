"""HTTP/1.1 connections within bounds: uvicorn's httptools protocol with limits and timeouts.

uvicorn's httptools protocol (what `uvicorn[standard]` runs) has no limit on the size of a
request's headers (h11's limit does not apply to it), no timeout while a request's headers or
body arrive, no cap on connections or on pipelined requests, and answers a parse error with a
plain-text 400 nobody counts. This subclass adds, per connection (docs/contract.md, settings
in service/settings.py):

- request line + headers over SAIT_MAX_HEADER_BYTES: 431 (414 when the URL alone is over);
  counted as they arrive, so a header streamed without end is cut off within one read;
- headers not complete SAIT_HEADER_TIMEOUT_S after the request's first byte: 408;
- a fresh or finished connection that sends nothing for SAIT_IDLE_TIMEOUT_S: closed;
- a body that no handler reads, not complete SAIT_BODY_TIMEOUT_S (+1 s) after its headers:
  408 or closed (the inference handlers time their own bodies and answer 408 first);
- more than SAIT_MAX_CONNECTIONS open: 503 at once; more than SAIT_MAX_PIPELINED_REQUESTS in
  flight on one connection: the extra ones are dropped and the connection closes after the
  answers already owed (a client resends unanswered requests on a new connection);
- malformed HTTP: 400.

Every such answer is `{"error": "..."}` with `Connection: close`, counted in
`sait_http_rejections_total{reason}` and logged in one line. The protocol then stops reading
requests but keeps reading (and dropping) what the client still sends for LINGER_S, after
half-closing its side: a client that is still uploading reads the answer instead of a
connection reset. The same holds when a handler answers before the body is in (413, 408):
the rest of the body is drained for up to LINGER_S, then the connection closes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.frontend.http_metrics import HttpMetrics

# After refusing a request whose bytes still come, read and drop them this long before closing.
LINGER_S = 2.0
# The inference handlers time their bodies (service.frontend.body) and answer 408 at
# SAIT_BODY_TIMEOUT_S; the protocol's own timer, this much later, only catches the rest.
BODY_GRACE_S = 1.0


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection bounds (the SAIT_* settings of the same names)."""

    max_header_bytes: int = 16_384
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 5.0
    max_connections: int = 1024
    max_pipelined_requests: int = 8

    @classmethod
    def from_settings(cls, s) -> ConnectionLimits:
        return cls(
            max_header_bytes=s.max_header_bytes,
            header_timeout_s=s.header_timeout_s,
            body_timeout_s=s.body_timeout_s,
            idle_timeout_s=s.idle_timeout_s,
            max_connections=s.max_connections,
            max_pipelined_requests=s.max_pipelined_requests,
        )


def error_bytes(
    status: int, message: str, default_headers: list[tuple[bytes, bytes]], *, retry_after_s: int | None = None
) -> bytes:
    """A complete `{"error": message}` response that closes the connection."""
    body = json.dumps({"error": message}).encode()
    parts = [STATUS_LINE[status]]
    for name, value in default_headers:
        parts += [name, b": ", value, b"\r\n"]
    parts.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n" % len(body))
    if retry_after_s is not None:
        parts.append(b"retry-after: %d\r\n" % retry_after_s)
    parts += [b"\r\n", body]
    return b"".join(parts)


class _Refused(Exception):
    """Raised from a parser callback: the request is answered, stop parsing."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with ConnectionLimits (see the module's docstring).

    uvicorn builds one per connection as `http_protocol_class(config=..., server_state=...,
    app_state=..., _loop=...)`: pass `functools.partial(GuardedHttpProtocol, limits=...,
    metrics=...)` as uvicorn.Config's `http` (service.frontend.server does).

    Phases of the request being received: "idle" (none), "head" (its line and headers),
    "body", "wait" (all in; the handler works). Only head and body run a deadline timer; idle
    uses uvicorn's keep-alive timer.
    """

    def __init__(self, config, server_state, app_state, _loop=None, *, limits: ConnectionLimits, metrics: HttpMetrics):
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.metrics = metrics
        self.timeout_keep_alive = limits.idle_timeout_s
        self._phase = "idle"
        self._head_bytes = 0  # of the request being received, from the parser's callbacks
        self._raw_head_bytes = 0  # bytes read while its head was unfinished (partial lines too)
        self._timer = None  # the head or body deadline, or the linger close
        self._refused = False  # no more requests are parsed on this connection

    # -- connection ---------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.metrics.open_connections.inc()
        if len(self.connections) > self.limits.max_connections:
            self._refuse(
                503,
                "connection_limit",
                f"too many open connections (SAIT_MAX_CONNECTIONS={self.limits.max_connections}); retry later",
                retry_after_s=1,
            )
            return
        # uvicorn arms its keep-alive timer after a response only: a connection that never
        # sends a byte needs one from the start.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.metrics.open_connections.dec()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._refused:
            return  # lingering: read and dropped
        head_continues = self._phase == "head"
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No WebSocket here (and h2c is not taken up): the request is served as HTTP/1.1.
            return
        except httptools.HttpParserError as exc:
            if not isinstance(exc.__context__, _Refused):
                self._refuse(400, "malformed", f"malformed HTTP request: {str(exc)[:120]}")
            return
        if self._phase == "head":
            # The parser keeps an unfinished header line to itself: count the raw bytes of
            # every read that began inside the head (the first read's share is counted by
            # the callbacks), so a header that never ends is cut off within one read.
            if head_continues:
                self._raw_head_bytes += len(data)
            if self._raw_head_bytes > self.limits.max_header_bytes:
                self._refuse_head_too_large()

    # -- parser callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = "head"
        self._head_bytes = self._raw_head_bytes = 0
        self._set_timer(self.limits.header_timeout_s, self._too_slow, "headers", self.limits.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_bytes += len(url)
        if len(self.url) > self.limits.max_header_bytes:
            self._refuse(
                414,
                "uri_too_long",
                f"the URL is longer than {self.limits.max_header_bytes} bytes (SAIT_MAX_HEADER_BYTES)",
            )
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._head_bytes > self.limits.max_header_bytes:
            self._refuse_head_too_large()
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        previous = self.cycle
        super().on_headers_complete()
        self._phase = "body"
        self._set_timer(self.limits.body_timeout_s + BODY_GRACE_S, self._too_slow, "body", self.limits.body_timeout_s)
        # In flight on this connection: the running request and the queued ones (the new one
        # is queued at the left end when an earlier one is still being answered).
        if len(self.pipeline) >= self.limits.max_pipelined_requests:
            self.pipeline.popleft()
            self.cycle = previous
            self._phase = "wait"
            self._refuse(
                None,
                "pipeline_limit",
                f"more than {self.limits.max_pipelined_requests} pipelined requests in flight "
                f"(SAIT_MAX_PIPELINED_REQUESTS); closing after the answers owed",
            )
            raise _Refused

    def on_message_complete(self) -> None:
        self._cancel_timer()
        super().on_message_complete()
        if self.cycle is not None and self.cycle.response_complete:
            # Answered before its body was in: the body is drained, the connection may stay.
            self._phase = "idle"
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )
        else:
            self._phase = "wait"

    def on_response_complete(self) -> None:
        if self._phase == "body" and self.cycle is not None and self.cycle.response_complete:
            # A handler answered before the body was in (413, 408, 401 ...): drain the rest
            # for a while so that the client reads the answer, then close.
            self._set_timer(LINGER_S, self._close)
        elif self._phase == "wait" and not self.pipeline:
            self._phase = "idle"
        super().on_response_complete()

    # -- deadlines ----------------------------------------------------------------------------
    def _too_slow(self, part: str, limit_s: float) -> None:
        """The request's `part` ("headers" or "body") did not arrive within `limit_s`: 408."""
        self._timer = None
        setting = "SAIT_HEADER_TIMEOUT_S" if part == "headers" else "SAIT_BODY_TIMEOUT_S"
        reason = "header_timeout" if part == "headers" else "body_timeout"
        self._refuse(408, reason, f"request {part} not received within {limit_s:g} s ({setting})")

    def abort(self, status: int, message: str) -> None:
        """Answer the request still in progress (if its answer has not begun) and close: the
        server's shutdown calls this when its time is up."""
        cycle = self.cycle
        if self.transport.is_closing():
            return
        if cycle is not None and not cycle.response_started and not self._refused:
            self._refused = True
            self.metrics.reject("shutdown", message, self.client)
            cycle.disconnected = True
            cycle.message_event.set()
            self.transport.write(error_bytes(status, message, self.server_state.default_headers))
        self._close()

    # -- answering and closing ------------------------------------------------------------------
    def _refuse_head_too_large(self) -> None:
        self._refuse(
            431,
            "header_too_large",
            f"request line and headers are larger than {self.limits.max_header_bytes} bytes (SAIT_MAX_HEADER_BYTES)",
        )

    def _refuse(self, status: int | None, reason: str, message: str, *, retry_after_s: int | None = None) -> None:
        """Answer `status` (None: no answer) for the request being received, stop reading
        requests, and close once what is owed is sent."""
        if self._refused:
            return
        self._refused = True
        self._cancel_timer()
        self.metrics.reject(reason, message, self.client)
        cycle = self.cycle
        if self._phase == "body" and cycle is not None:  # the refused request is `cycle`
            if cycle.response_complete:  # answered early; the rest of its body never came
                self._close()
                return
            if cycle.response_started:
                cycle.keep_alive = False
                return
            # Its handler has not answered: the protocol does, and drops the handler's answer.
            cycle.disconnected = True
            cycle.message_event.set()
        elif cycle is not None and not cycle.response_complete:
            # An earlier request's answer is owed first: send it, then close (no answer here).
            cycle.keep_alive = False
            return
        if status is not None:
            self.transport.write(
                error_bytes(status, message, self.server_state.default_headers, retry_after_s=retry_after_s)
            )
        self._linger_then_close()

    def _linger_then_close(self) -> None:
        """Half-close after the answer, read and drop what still comes for LINGER_S, then close
        (sooner when the client closes its side: uvicorn's eof_received closes the transport)."""
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._set_timer(LINGER_S, self._close)

    def _close(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _set_timer(self, delay_s: float, callback, *args) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay_s, callback, *args)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
