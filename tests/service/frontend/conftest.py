"""One real uvicorn server (tiny random ViT) for the HTTP tests of this package, and its clients."""

from __future__ import annotations

import httpx
import pytest
import tritonclient.http as triton
from svc_helpers import MAX_BODY, running_server


@pytest.fixture(scope="session")
def server():
    # A generous default budget: on a shared 2-core runner a tiny batch can take a second.
    with running_server(
        max_body_bytes=MAX_BODY, max_queue_delay_ms=30, max_batch_size=8, default_budget_ms=60_000
    ) as s:
        yield s


@pytest.fixture(scope="session")
def client(server):
    c = triton.InferenceServerClient(server.hostport, concurrency=4, connection_timeout=30, network_timeout=60)
    yield c
    c.close()


@pytest.fixture(scope="session")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c
