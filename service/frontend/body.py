"""Reading request bodies within the size limit (413 beyond it) and in time (408), and
decompressing them.

The limit is enforced while the body streams in, so a client that lies about (or omits)
Content-Length still cannot make the server buffer more than SAIT_MAX_BODY_BYTES. A
compressed body (tritonclient's request_compression_algorithm) is inflated under the same
limit, so a small zip bomb cannot expand past it either. A body that is not in within
SAIT_BODY_TIMEOUT_S is answered 408; a client that goes away mid-body ends its request as
ClientDisconnected (counted, no answer, no traceback).
"""

from __future__ import annotations

import asyncio
import zlib

from starlette.requests import ClientDisconnect, Request

from service.errors import BadRequest, ClientDisconnected, PayloadTooLarge, RequestTimeout


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than {limit} bytes (SAIT_MAX_BODY_BYTES)")


async def read_body(request: Request, *, limit: int, timeout_s: float | None = None) -> bytes:
    """The whole body; PayloadTooLarge as soon as it passes `limit` bytes, RequestTimeout when
    it is not in after `timeout_s`, ClientDisconnected when the client goes away."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _too_large(limit)
        except ValueError:
            raise BadRequest(f"invalid Content-Length header {declared[:40]!r}") from None
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except ClientDisconnect:
        raise ClientDisconnected(f"the client closed the connection after {size} bytes of the body") from None
    except TimeoutError:
        raise RequestTimeout(
            f"request body not received within {timeout_s:g} s (SAIT_BODY_TIMEOUT_S): {size} bytes arrived"
        ) from None
    body = b"".join(chunks)
    # Starlette's form parser reads the cached body instead of the (consumed) stream.
    request._body = body
    return body


def decompress(body: bytes, encoding: str | None, *, limit: int) -> bytes:
    """Inflate a gzip/deflate body, refusing output past `limit` bytes."""
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise BadRequest(f"unsupported Content-Encoding {encoding!r} (use gzip, deflate or none)")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"cannot decompress {encoding} body: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise _too_large(limit)
    return out
