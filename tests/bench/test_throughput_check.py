"""The throughput check sends what the server parses."""

from __future__ import annotations

from service.frontend.v2_codec import (
    HEADER_LENGTH,
    RequestedOutput,
    parse_infer_request,
)

SIZE = (3, 224, 224)


def test_throughput_check_sends_what_the_server_parses():
    from bench.throughput_check import infer_body

    body, headers = infer_body("m", "l050", 3, SIZE)
    req = parse_infer_request(body, headers[HEADER_LENGTH], input_size=SIZE, max_batch_size=8)
    assert req.pixels.shape == (3, *SIZE) and req.parameters["density"] == "l050"
    assert req.outputs == [RequestedOutput("probabilities", binary=True)]
