"""Domain errors -> HTTP statuses and OpenAI's error envelope, in one place.

`{"error": {"message", "type", "param", "code"}}`, `param` the field's path in the body. A
`ProblemError` is an error the edge itself finds (no route, unknown model, bad token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from steering.errors import EngineClosedError, InvalidRequestError, QueueFullError, SteeringError

# status, OpenAI's `type`, `code`
KINDS: dict[type[SteeringError], tuple[int, str, str]] = {
    InvalidRequestError: (400, "invalid_request_error", "invalid_value"),
    QueueFullError: (429, "rate_limit_error", "queue_full"),
    EngineClosedError: (503, "service_unavailable", "unavailable"),
}
INTERNAL = (500, "server_error", "internal_error")
# The outcome label of `steering_requests_total` for each status: gRPC's code names.
OUTCOME_OF = {
    200: "ok",
    400: "invalid_argument",
    401: "unauthenticated",
    404: "invalid_argument",
    429: "resource_exhausted",
    499: "cancelled",
    503: "unavailable",
}


@dataclass
class ProblemError(Exception):
    """An error the HTTP edge answers itself."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None


def problem_of(exc: SteeringError, param: str | None) -> ProblemError:
    """The HTTP answer to a domain error; `param`: the field's path in the body, if any."""
    for kind in type(exc).__mro__:
        if kind in KINDS:
            status, type_, code = KINDS[kind]
            message = exc.message if isinstance(exc, InvalidRequestError) else str(exc)
            return ProblemError(status, message, type_, code, param)
    status, type_, code = INTERNAL
    return ProblemError(status, str(exc) or "internal error", type_, code)


def envelope(problem: ProblemError) -> dict[str, Any]:
    return {
        "error": {
            "message": problem.message,
            "type": problem.type,
            "param": problem.param,
            "code": problem.code,
        }
    }


def outcome_of(status: int) -> str:
    return OUTCOME_OF.get(status, "internal")
