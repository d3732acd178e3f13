"""What both APIs do around an inference: admission, one accounting record, errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from service.engine.core import Engine, RequestResult
from service.errors import ServiceError, Unavailable


def error_response(exc: ServiceError) -> JSONResponse:
    """Triton's error body, {"error": "..."}, with the error's status and headers."""
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())


async def serve_inference(
    request: Request,
    api: str,
    work: Callable[[Engine, float], Awaitable[RequestResult]],
    respond: Callable[[Engine, RequestResult], Response],
) -> Response:
    """Run `work` (parse, decode, infer) and `respond`; the engine records the request exactly once.

    Args:
        api: "v1" or "v2" (metrics label).
        work: (engine, arrival_s) -> RequestResult; raises ServiceError for any failure.
        respond: builds the success response from the result.
    """
    engine: Engine = request.app.state.engine
    arrival_s = time.perf_counter()
    engine.request_started()
    try:
        engine.admit()
        result = await work(engine, arrival_s)
        response = respond(engine, result)
    except ServiceError as exc:
        engine.request_finished(
            api=api,
            level=exc.level,
            outcome=exc.outcome,
            arrival_s=arrival_s,
            deadline_met=False if exc.outcome == "expired" else None,
        )
        return error_response(exc)
    except asyncio.CancelledError:  # the server's shutdown ran out of time: answered 503 by the protocol
        engine.request_finished(api=api, level=None, outcome=Unavailable.outcome, arrival_s=arrival_s)
        raise
    except BaseException:
        engine.request_finished(api=api, level=None, outcome="error", arrival_s=arrival_s)
        raise
    engine.request_finished(
        api=api, level=result.decision.level, outcome="ok", arrival_s=arrival_s, deadline_met=result.deadline_met
    )
    return response
