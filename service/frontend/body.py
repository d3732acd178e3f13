"""Reading request bodies within the size limit (413 beyond it), and decompressing them.

The limit is enforced while the body streams in, so a client that lies about (or omits)
Content-Length still cannot make the server buffer more than SAIT_MAX_BODY_BYTES. A
compressed body (tritonclient's request_compression_algorithm) is inflated under the same
limit, so a small zip bomb cannot expand past it either.
"""

from __future__ import annotations

import zlib

from starlette.requests import Request

from service.errors import BadRequest, PayloadTooLarge


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than {limit} bytes (SAIT_MAX_BODY_BYTES)")


async def read_body(request: Request, *, limit: int) -> bytes:
    """The whole body, or PayloadTooLarge as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _too_large(limit)
        except ValueError:
            raise BadRequest(f"invalid Content-Length header {declared!r}") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
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
