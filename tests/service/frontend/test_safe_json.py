"""Client JSON within bounds: depth and digits checked before parsing, size (issue item 1)."""

from __future__ import annotations

import json
import time

import pytest

from service.errors import BadRequest, PayloadTooLarge
from service.frontend.safe_json import JsonLimits, loads_bounded

LIMITS = JsonLimits(max_bytes=50_000_000, max_depth=8, max_number_digits=20)


def test_plain_json_parses():
    doc = {"a": [1, 2.5, -3e-7, "x"], "b": {"c": [[1], [2]]}, "d": None, "e": True}
    assert loads_bounded(json.dumps(doc).encode(), LIMITS) == doc


def test_depth_at_the_limit_parses_one_more_is_refused():
    assert loads_bounded(b"[" * 8 + b"]" * 8, LIMITS) == [[[[[[[[]]]]]]]]
    with pytest.raises(BadRequest, match="deeper than 8 levels"):
        loads_bounded(b"[" * 9 + b"]" * 9, LIMITS)
    with pytest.raises(BadRequest, match="deeper than 8 levels"):
        loads_bounded(b'{"a":' * 9 + b"1" + b"}" * 9, LIMITS)


def test_the_issues_100000_deep_body_is_a_quick_400():
    body = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    start = time.perf_counter()
    with pytest.raises(BadRequest, match="SAIT_MAX_JSON_DEPTH"):
        loads_bounded(body, JsonLimits())
    assert time.perf_counter() - start < 0.5


def test_brackets_and_digits_inside_strings_do_not_count():
    text = '"' + "[" * 50 + "9" * 50 + '\\"[[[' + '"'
    doc = loads_bounded(('{"id": ' + text + ', "n": [1]}').encode(), LIMITS)
    assert doc["n"] == [1] and doc["id"].startswith("[[[")


@pytest.mark.parametrize("digits", [21, 400, 5000])
def test_long_numbers_are_refused(digits):
    with pytest.raises(BadRequest, match="more than 20 digits"):
        loads_bounded(b'{"top_k": ' + b"9" * digits + b"}", LIMITS)
    assert loads_bounded(b'{"top_k": ' + b"9" * 20 + b"}", LIMITS) == {"top_k": int("9" * 20)}


def test_size_and_malformed():
    with pytest.raises(PayloadTooLarge, match="SAIT_MAX_JSON_BYTES") as info:
        loads_bounded(b"[" + b"1," * 600 + b"1]", JsonLimits(max_bytes=1024))
    assert info.value.status == 413
    for bad in (b"{nope", b"\xff\xfe", b"", b"[1,]", b"]]]][[[["):
        with pytest.raises(BadRequest):
            loads_bounded(bad, LIMITS)


def test_a_large_pixel_body_is_checked_quickly():
    body = json.dumps({"inputs": [{"data": list(range(256)) * 4000}]}).encode()  # 4 MB of numbers
    start = time.perf_counter()
    loads_bounded(body, JsonLimits(max_bytes=16 << 20))
    parse_s = time.perf_counter() - start
    start = time.perf_counter()
    json.loads(body)
    plain_s = time.perf_counter() - start
    assert parse_s < 3 * plain_s + 0.05  # the checks cost less than the parse itself, give or take
