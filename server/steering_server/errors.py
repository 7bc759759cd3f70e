"""Domain errors -> gRPC status codes, in one place, and the interceptors that apply them.

`ErrorInterceptor` turns core exceptions into their status and any other exception into INTERNAL
with a sanitised message (the traceback goes to the log, never to the client). `AuthInterceptor`
checks a bearer token in constant time; health checks stay open for probes.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc import aio

from steering.errors import (
    EngineClosedError,
    InvalidRequestError,
    ModelError,
    QueueFullError,
    SaeFormatError,
    SteeringError,
)

log = logging.getLogger(__name__)

STATUS_OF: dict[type[SteeringError], grpc.StatusCode] = {
    InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    QueueFullError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    EngineClosedError: grpc.StatusCode.UNAVAILABLE,
    SaeFormatError: grpc.StatusCode.INTERNAL,
    ModelError: grpc.StatusCode.INTERNAL,
}


class RequestFailedError(SteeringError):
    """The engine failed this request (its message is safe to show the client)."""


class ShuttingDownError(SteeringError):
    """The server stopped before this request finished."""


STATUS_OF[RequestFailedError] = grpc.StatusCode.INTERNAL
STATUS_OF[ShuttingDownError] = grpc.StatusCode.UNAVAILABLE


def status_of(exc: SteeringError) -> grpc.StatusCode:
    for kind in type(exc).__mro__:
        if kind in STATUS_OF:
            return STATUS_OF[kind]
    return grpc.StatusCode.INTERNAL


# Handlers are typed `Any` here: grpc's stubs cannot express a handler wrapped at run time.
Handler = Any
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]


async def _abort_for(exc: Exception, context: Any, method: str) -> None:
    if isinstance(exc, SteeringError):
        await context.abort(status_of(exc), str(exc))
    log.exception("unexpected error in %s", method)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


class ErrorInterceptor(aio.ServerInterceptor):
    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        if handler.unary_unary is not None:
            inner_unary = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                try:
                    return await inner_unary(request, context)
                except aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort_for(exc, context, method)

            return handler._replace(unary_unary=unary)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(
                request: Any, context: aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort_for(exc, context, method)

            return handler._replace(unary_stream=stream)
        return handler


OPEN_METHODS = ("/grpc.health.v1.Health/",)


class AuthInterceptor(aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>` with one of `tokens` (health checks excepted)."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self._tokens = [token.encode() for token in tokens]

    def allowed(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        header = next((v for k, v in metadata or () if k == "authorization"), None)
        if header is None:
            return False
        value = header.encode() if isinstance(header, str) else header
        scheme, _, token = value.partition(b" ")
        # Compare with every token, whatever matches, so timing says nothing about them.
        matches = [hmac.compare_digest(token, known) for known in self._tokens]
        return scheme.lower() == b"bearer" and any(matches)

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        if details.method.startswith(OPEN_METHODS) or self.allowed(details.invocation_metadata):
            return await continuation(details)
        handler = await continuation(details)
        return _deny(handler)


def _deny(handler: Handler) -> Handler:
    async def refuse(request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

    if handler is not None and handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            refuse,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        refuse,
        request_deserializer=handler.request_deserializer if handler else None,
        response_serializer=handler.response_serializer if handler else None,
    )
