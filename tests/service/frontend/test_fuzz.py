"""Fuzzing (issue 20): whatever a client sends, the answer is a 4xx error, never another exception.

Property-based (hypothesis) over the parsers that read client bytes: the v2 codec, the dial,
bounded JSON, BYTES elements, decompression. Then a bounded HTTP run against the real server
of conftest.py: a few thousand mutated v1 and v2 requests (seeded, so a failure replays), no
5xx among them, no error logged, and the server still serves. Both together stay well under a
minute on the 2-core development machine.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import logging
import random
import struct

import httpx
import numpy as np
import pytest
from svc_helpers import TINY, jpeg_bytes, png_bytes

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis (dev dependency) not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from service.dial import DIAL_FIELDS, parse_density, parse_dial  # noqa: E402
from service.errors import ServiceError  # noqa: E402
from service.frontend.body import decompress  # noqa: E402
from service.frontend.safe_json import JsonLimits, loads_bounded  # noqa: E402
from service.frontend.v2_codec import deserialize_bytes, parse_infer_request  # noqa: E402

SIZE = (3, 224, 224)
# No example database in the repository; a fixed number of examples keeps the time bounded.
FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def client_error(call) -> object:
    """The call's result, or None when it refused the input with a 4xx ServiceError; any other
    exception (or a 5xx) fails the test."""
    try:
        return call()
    except ServiceError as exc:
        assert 400 <= exc.status < 500, (exc.status, exc.message)
        assert exc.message and "\n" not in exc.message
        return None


# -- strategies -----------------------------------------------------------------------------------
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**50), max_value=10**50),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=10), inner, max_size=6)),
    max_leaves=30,
)
shapes = st.one_of(
    st.lists(st.integers(min_value=-2, max_value=300), max_size=5), json_values, st.just([1, 3, 224, 224])
)
inputs = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.sampled_from(["image", "pixels"]), st.text(max_size=8), json_values),
        "shape": shapes,
        "datatype": st.one_of(st.sampled_from(["BYTES", "UINT8", "FP32"]), json_values),
        "data": st.one_of(
            st.lists(st.text(alphabet="ABCDEFGHabcdefgh0123456789+/=", max_size=12), max_size=4), json_values
        ),
        "parameters": st.one_of(st.fixed_dictionaries({"binary_data_size": json_values}), json_values),
    },
)
outputs = st.lists(
    st.fixed_dictionaries(
        {"name": st.one_of(st.sampled_from(["probabilities", "top_k_indices"]), json_values)},
        optional={"parameters": st.dictionaries(st.sampled_from(["binary_data", "classification"]), json_values)},
    ),
    max_size=4,
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "inputs": st.one_of(st.lists(inputs, max_size=3), json_values),
        "outputs": st.one_of(outputs, json_values),
        "parameters": st.one_of(st.dictionaries(st.sampled_from([*DIAL_FIELDS, "timeout"]), json_values), json_values),
    },
)


# -- property-based --------------------------------------------------------------------------------
def _parse(body: bytes, header_length: str | None):
    limits = JsonLimits(max_bytes=1 << 20, max_depth=16, max_number_digits=30)
    return parse_infer_request(body, header_length, input_size=SIZE, max_batch_size=8, json_limits=limits)


@FUZZ
@given(body=st.binary(max_size=512), header_length=st.one_of(st.none(), st.text(max_size=6), st.integers().map(str)))
def test_v2_codec_any_bytes(body, header_length):
    client_error(lambda: _parse(body, header_length))


@FUZZ
@given(doc=documents, tail=st.binary(max_size=64), split=st.booleans())
def test_v2_codec_any_document(doc, tail, split):
    head = json.dumps(doc).encode()
    client_error(lambda: _parse(head + tail if split else head, str(len(head)) if split else None))


@FUZZ
@given(values=st.fixed_dictionaries({name: json_values for name in [*DIAL_FIELDS, "timeout_us"]}))
def test_dial_any_json_values(values):
    client_error(lambda: parse_dial(**values, num_classes=1000))


@FUZZ
@given(values=st.fixed_dictionaries({name: st.one_of(st.none(), st.text(max_size=60)) for name in DIAL_FIELDS}))
def test_dial_any_query_strings(values):
    values.pop("priority")  # as /v1/classify reads its query
    client_error(lambda: parse_dial(**values, num_classes=1000))


@FUZZ
@given(value=json_values)
def test_density_any_value(value):
    client_error(lambda: parse_density(value))


@FUZZ
@given(data=st.one_of(st.binary(max_size=256), json_values.map(lambda v: json.dumps(v).encode())))
def test_bounded_json_any_bytes(data):
    client_error(lambda: loads_bounded(data, JsonLimits(max_bytes=4096, max_depth=4, max_number_digits=20)))


@FUZZ
@given(raw=st.binary(max_size=128))
def test_bytes_elements_any_bytes(raw):
    client_error(lambda: deserialize_bytes(raw))


@FUZZ
@given(body=st.binary(max_size=128), encoding=st.one_of(st.none(), st.sampled_from(["gzip", "deflate", "br", ""])))
def test_decompress_any_bytes(body, encoding):
    client_error(lambda: decompress(body, encoding, limit=4096))


# -- HTTP: mutated requests against the real server -------------------------------------------------
REQUESTS = 2000
ALLOWED = {200, 400, 404, 405, 413, 415, 429}


def _seeds() -> list[tuple[str, str, dict, bytes]]:
    """Valid requests of every kind, to mutate: (method, path, headers, body)."""
    jpeg, png = jpeg_bytes(width=64, height=48, seed=11), png_bytes()
    blob = struct.pack("<I", len(jpeg)) + jpeg
    head = json.dumps(
        {
            "inputs": [
                {"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(blob)}}
            ],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
            "parameters": {"latency_budget_ms": 5000, "top_k": 3},
        }
    ).encode()
    pixels = np.zeros((1, *SIZE), dtype=np.uint8).tobytes()
    head_pixels = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [1, *SIZE],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": len(pixels)},
                }
            ]
        }
    ).encode()
    json_bytes = json.dumps(
        {
            "id": "r1",
            "inputs": [
                {"name": "image", "shape": [2], "datatype": "BYTES", "data": [base64.b64encode(png).decode()] * 2}
            ],
            "parameters": {"density": "l050", "priority": 1, "timeout": 5_000_000},
        }
    ).encode()
    json_pixels = json.dumps(
        {"inputs": [{"name": "pixels", "shape": [1, *SIZE], "datatype": "UINT8", "data": [7] * (3 * 224 * 224)}]}
    ).encode()
    infer = f"/v2/models/{TINY}/infer"
    boundary = "fuzzboundary"
    multipart = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode()
        + jpeg
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return [
        ("POST", "/v1/classify?top_k=3&latency_budget_ms=5000", {"content-type": "image/jpeg"}, jpeg),
        (
            "POST",
            "/v1/classify?density=dense",
            {"content-type": f"multipart/form-data; boundary={boundary}"},
            multipart,
        ),
        ("POST", infer, {"inference-header-content-length": str(len(head))}, head + blob),
        ("POST", infer, {"inference-header-content-length": str(len(head_pixels))}, head_pixels + pixels),
        ("POST", f"/v2/models/{TINY}/versions/1/infer", {"content-type": "application/json"}, json_bytes),
        ("POST", infer, {"content-type": "application/json"}, json_pixels),
    ]


# Raw JSON no json.dumps writes (or none in one piece): each was a 500 before issue 20.
SPLICE = "\u0000splice"
RAW_VALUES = [b"9" * 5000, b"9" * 400, b"[" * 100_000 + b"]" * 100_000, b"1e999", b"-0", b"1" + b"0" * 30]


def _mutate_json(rng: random.Random, data: bytes) -> bytes:
    """Replace one value somewhere in a JSON document by something else."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # an earlier mutation broke it: nothing to walk
        return data
    holders, stack = [], [doc]
    while stack:
        node = stack.pop()
        keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else []
        for k in keys:
            holders.append((node, k))
            stack.append(node[k])
    if holders:
        node, key = rng.choice(holders)
        node[key] = rng.choice(
            [None, True, -1, 0, 2**70, 10**30, 1e308, "", "x" * 300, "l050", [], {}, [[[[1]]]], {"a": [1, 2]}, 255, 3.5]
            + [SPLICE] * 4
        )
    return json.dumps(doc).encode().replace(json.dumps(SPLICE).encode(), rng.choice(RAW_VALUES))


def _mutate(rng: random.Random, seed: tuple[str, str, dict, bytes]) -> tuple[str, str, dict, bytes]:
    method, path, headers, body = seed
    headers = dict(headers)
    body = bytearray(body)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(10)
        if kind == 0 and body:  # flip bytes
            for _ in range(rng.randint(1, 8)):
                body[rng.randrange(len(body))] = rng.randrange(256)
        elif kind == 1 and body:  # truncate
            del body[rng.randrange(len(body)) :]
        elif kind == 2:  # insert junk
            at = rng.randrange(len(body) + 1)
            body[at:at] = rng.randbytes(rng.randint(1, 64))
        elif kind == 3:  # a value of the JSON header
            declared = headers.get("inference-header-content-length", "")
            n = int(declared) if declared.isdigit() else len(body)
            head = _mutate_json(rng, bytes(body[:n]))
            body[:n] = head
            if "inference-header-content-length" in headers:
                headers["inference-header-content-length"] = str(len(head))
        elif kind == 4:  # the header length
            headers["inference-header-content-length"] = rng.choice(["0", "-1", "x", str(len(body) + 5), "9" * 40])
        elif kind == 5:  # the content type / encoding
            headers["content-type"] = rng.choice(["text/plain", "", "image/gif", "application/x-www-form-urlencoded"])
            if rng.random() < 0.3:
                headers["content-encoding"] = rng.choice(["gzip", "deflate", "br", "identity"])
        elif kind == 6:  # the query
            name = rng.choice([*DIAL_FIELDS, "timeout"])
            value = rng.choice(["", "-1", "nan", "inf", "1e999", "9" * 400, "dense", "%00", "0.0000001", "🙂", "1,2"])
            path = path.split("?")[0] + f"?{name}={value}"
        elif kind == 7:  # the model or version in the path
            path = path.replace(TINY, rng.choice(["", "x", "..", TINY + "/versions/2", "%2e%2e"]), 1)
        elif kind == 8:  # the method
            method = rng.choice(["GET", "PUT", "DELETE", "PATCH"])
        else:  # a duplicated slice
            if body:
                a = rng.randrange(len(body))
                body[a:a] = body[a : a + rng.randint(1, 256)]
    return method, path, headers, bytes(body)


def test_http_fuzz_no_5xx_and_the_server_still_serves(server):
    rng = random.Random(20)
    seeds = _seeds()
    # The JSON pixel body (half a megabyte of numbers) is the slow one: sent less often.
    cases = [_mutate(rng, rng.choices(seeds, weights=[3, 2, 3, 2, 3, 1])[0]) for _ in range(REQUESTS)]
    errors: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            errors.append(record.getMessage())

    keep = Keep(level=logging.ERROR)
    watched = [logging.getLogger(name) for name in ("uvicorn.error", "service", "")]
    for logger in watched:
        logger.addHandler(keep)

    def send(chunk):
        statuses = []
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for method, path, headers, body in chunk:
                r = client.request(method, path, headers=headers, content=body)
                if r.status_code != 200:
                    assert "error" in r.json(), (method, path, r.status_code, r.text[:200])
                statuses.append(r.status_code)
        return statuses

    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            statuses = [s for part in pool.map(send, [cases[i::4] for i in range(4)]) for s in part]
    finally:
        for logger in watched:
            logger.removeHandler(keep)
    seen = {s: statuses.count(s) for s in sorted(set(statuses))}
    print("statuses of the HTTP fuzz run:", seen)
    assert set(seen) <= ALLOWED, seen
    assert seen.get(200, 0) > 0 and seen.get(400, 0) > REQUESTS // 4, seen  # the run reached both ends
    assert errors == []
    ok = httpx.post(f"{server.url}/v1/classify", content=jpeg_bytes(seed=1), headers={"content-type": "image/jpeg"})
    assert ok.status_code == 200 and httpx.get(f"{server.url}/v2/health/ready").status_code == 200
