"""Errors a request can end in, each with its HTTP status and its metrics outcome.

Both APIs answer them as `{"error": "..."}` (Triton's error body), with Triton's codes where
Triton has one (400 invalid argument, 404 not found, 503 unavailable, 500 internal) and the
HTTP meaning otherwise (408 body too slow, 413 too large, 415 wrong Content-Type, 429 shed with
Retry-After, 504 expired in the queue).
"""

from __future__ import annotations

import math


class ServiceError(Exception):
    """A request that ends without a result.

    Args:
        message: one readable line for the client.
        status: HTTP status code.
        outcome: `sait_requests_total{outcome}` label.
        retry_after_s: for 429/503, the Retry-After header in seconds.
    """

    status = 500
    outcome = "error"

    def __init__(self, message: str, *, status: int | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.retry_after_s = retry_after_s
        self.level: str | None = None  # set once the controller has chosen one

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}

    def body(self) -> dict:
        return {"error": self.message}


class BadRequest(ServiceError):
    """The client sent something unusable (Triton: INVALID_ARG -> 400)."""

    status = 400
    outcome = "bad_request"


class NotFound(BadRequest):
    """Unknown model (Triton: NOT_FOUND -> 404)."""

    status = 404


class PayloadTooLarge(BadRequest):
    status = 413


class RequestTimeout(BadRequest):
    """The body did not arrive within SAIT_BODY_TIMEOUT_S."""

    status = 408


class UnsupportedMediaType(BadRequest):
    status = 415


class ClientDisconnected(ServiceError):
    """The client closed the connection before its request was read: nobody gets the answer.

    499 is nginx's code for it; no client ever sees it, it names the case in logs and tests.
    """

    status = 499
    outcome = "client_disconnect"


class Shed(ServiceError):
    """Refused early: even the sparsest allowed level cannot meet the deadline, or the queue is full."""

    status = 429
    outcome = "shed"


class Expired(ServiceError):
    """The deadline passed while the request waited in the queue; no compute was spent."""

    status = 504
    outcome = "expired"


class Unavailable(ServiceError):
    """Not ready yet, or draining after SIGTERM (Triton: UNAVAILABLE -> 503)."""

    status = 503
    outcome = "shed"


class InternalError(ServiceError):
    """The batch that held this request failed; only its own requests get this."""

    status = 500
    outcome = "error"


# The error a status code stands for, to rebuild an error that crossed a process boundary.
ERRORS_BY_STATUS: dict[int, type[ServiceError]] = {
    cls.status: cls for cls in (BadRequest, NotFound, PayloadTooLarge, Shed, Expired, Unavailable, InternalError)
}
