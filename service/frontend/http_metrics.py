"""The HTTP layer's own metrics: connections, and what it refused before a handler answered.

A registry per app, beside the engine's: these counts belong to the process that holds the
connections (with several API processes, each has its own), and the engine's interface stays
as it is. `/metrics` serves both expositions one after the other (docs/contract.md).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

log = logging.getLogger("service.http")

# Why the HTTP layer answered a request itself (or closed its connection); docs/contract.md.
REJECTIONS = (
    "header_too_large",  # 431: request line + headers over SAIT_MAX_HEADER_BYTES
    "uri_too_long",  # 414: the URL alone over it
    "malformed",  # 400: not HTTP/1.1 the parser accepts
    "header_timeout",  # 408: headers not in within SAIT_HEADER_TIMEOUT_S
    "body_timeout",  # 408 (or a close): a body not in within SAIT_BODY_TIMEOUT_S that no handler read
    "connection_limit",  # 503: SAIT_MAX_CONNECTIONS open already
    "pipeline_limit",  # closed: more than SAIT_MAX_PIPELINED_REQUESTS requests in flight on one connection
    "unauthorized",  # 401: no valid API key
    "host_not_allowed",  # 400: a Host header outside SAIT_ALLOWED_HOSTS
    "shutdown",  # 503: still unanswered when the shutdown's time was up
)


class HttpMetrics:
    """Counters of the HTTP layer in their own registry.

    Args:
        registry: where to register (a new one by default).
        process: the API process's index (label `process`; 0 when one process serves), as
            the engine's sait_api_requests_total: with several API processes a scrape reaches
            one of them, and each keeps its own series.
    """

    def __init__(self, *, registry: CollectorRegistry | None = None, process: int = 0):
        self.registry = r = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.process = str(process)
        self.rejections = Counter(
            "sait_http_rejections_total",
            "Requests the HTTP layer answered itself, or connections it closed, before any handler did, by reason.",
            ["process", "reason"],
            registry=r,
        )
        self.connections = Gauge("sait_http_open_connections", "Open client connections.", ["process"], registry=r)
        self.open_connections = self.connections.labels(process=self.process)
        for reason in REJECTIONS:
            self.rejections.labels(process=self.process, reason=reason)

    def reject(self, reason: str, detail: str, client: tuple[str, int] | None = None) -> None:
        """Count one rejection and log it in one line (no traceback: the client's fault, not ours)."""
        self.rejections.labels(process=self.process, reason=reason).inc()
        who = f"{client[0]}:{client[1]}" if client else "a client"
        log.info("refused %s: %s (%s)", who, detail, reason)

    def render(self) -> bytes:
        return generate_latest(self.registry)
