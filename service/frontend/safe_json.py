"""JSON from clients, parsed within bounds: nesting depth and digits per number.

`json.loads` recurses once per nesting level (a body of 100,000 `[` ends in RecursionError)
and turns any run of digits into a Python int (a 5000-digit one raises ValueError, a 400-digit
one overflows wherever a float or an int64 is made of it). Both are checked before parsing,
on the raw bytes at C speed (bytes.translate, bytes.find, one regex for strings, numpy; no
Python loop over the text), so the checks cost little beside the parse itself even on a body
of megabytes, and every failure is a BadRequest naming the limit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

from service.errors import BadRequest, PayloadTooLarge

# A JSON string, escapes included (the unrolled form: no backtracking per character).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_DROP_ALL_BUT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")


@dataclass(frozen=True)
class JsonLimits:
    """Bounds on a client's JSON (SAIT_MAX_JSON_BYTES, SAIT_MAX_JSON_DEPTH, SAIT_MAX_NUMBER_DIGITS)."""

    max_bytes: int = 4_194_304
    max_depth: int = 32
    max_number_digits: int = 40

    @classmethod
    def from_settings(cls, settings) -> JsonLimits:
        return cls(settings.max_json_bytes, settings.max_json_depth, settings.max_number_digits)


def loads_bounded(data: bytes, limits: JsonLimits, *, what: str = "the request header") -> object:
    """Parse `data` as JSON; PayloadTooLarge past `limits.max_bytes`, BadRequest when it is not
    JSON, nests deeper than `limits.max_depth` or holds a number longer than allowed."""
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(
            f"{what} has {len(data)} bytes of JSON, over the limit of {limits.max_bytes} (SAIT_MAX_JSON_BYTES); "
            f"send large tensors with the binary tensor data extension"
        )
    max_depth, max_number_digits = limits.max_depth, limits.max_number_digits
    bare = _without_strings(data)
    # Every digit made a 0, then one substring search: bytes.find beats a regex here tenfold.
    if bare.translate(_DIGITS_AS_ZERO).find(b"0" * (max_number_digits + 1)) >= 0:
        raise BadRequest(f"a number in {what} has more than {max_number_digits} digits (SAIT_MAX_NUMBER_DIGITS)")
    brackets = bare.translate(None, _DROP_ALL_BUT_BRACKETS)
    # Fewer brackets than the limit cannot nest deeper than it: the common case stops here.
    if len(brackets) > max_depth and _depth(brackets) > max_depth:
        raise BadRequest(f"{what} nests JSON deeper than {max_depth} levels (SAIT_MAX_JSON_DEPTH)")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"malformed JSON in {what}: {exc}") from None
    except (ValueError, RecursionError) as exc:  # what the scan above lets through, should any
        raise BadRequest(f"unusable JSON in {what}: {type(exc).__name__}") from None


def _without_strings(data: bytes) -> bytes:
    """`data` with every JSON string emptied: strings may hold brackets and digits of their own."""
    if b'"' not in data:
        return data
    if b"\\" not in data:  # no escapes (base64 has none): strings lie between consecutive quotes
        return b'""'.join(data.split(b'"')[0::2])
    return _STRING.sub(b'""', data)


def _depth(brackets: bytes) -> int:
    """Deepest nesting of a run of bracket characters (unbalanced runs only count what opens)."""
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1).astype(np.int32)
    return int(np.cumsum(steps).max())
