"""Request bodies: decompression under the size limit."""

from __future__ import annotations

import gzip

import pytest

from service.errors import BadRequest, PayloadTooLarge
from service.frontend.body import decompress


def test_decompress_guards_against_zip_bombs():
    assert decompress(gzip.compress(b"x" * 100), "gzip", limit=1000) == b"x" * 100
    with pytest.raises(PayloadTooLarge):
        decompress(gzip.compress(b"\0" * 2_000_000), "gzip", limit=1_000_000)
    with pytest.raises(BadRequest, match="Content-Encoding"):
        decompress(b"x", "br", limit=10)
