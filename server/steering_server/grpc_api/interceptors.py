"""Domain errors -> gRPC status codes, in one place, and the interceptors that apply them.

`ErrorInterceptor` turns core exceptions into their status, a request that cannot be decoded into
INVALID_ARGUMENT, and any other exception into INTERNAL with a sanitised message (the traceback
goes to the log, never to the client). `AuthInterceptor` checks a bearer token in constant time;
health checks stay open for probes.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from steering.errors import (
    EngineClosedError,
    InvalidRequestError,
    ModelError,
    QueueFullError,
    RequestFailedError,
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
    RequestFailedError: grpc.StatusCode.INTERNAL,
}


def status_of(exc: SteeringError) -> grpc.StatusCode:
    for kind in type(exc).__mro__:
        if kind in STATUS_OF:
            return STATUS_OF[kind]
    return grpc.StatusCode.INTERNAL


# Handlers are typed `Any` here: grpc's stubs cannot express a handler wrapped at run time.
Handler = Any
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]
# Told of each call refused before it reached its handler: (method, status code).
OnRefused = Callable[[str, grpc.StatusCode], None]


class Undecodable:
    """Stands for a request body that does not parse as its message (e.g. invalid UTF-8)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that returns `Undecodable` instead of raising: gRPC would answer UNKNOWN
    with the parser's exception; the handler wrappers answer INVALID_ARGUMENT instead."""
    if deserializer is None:
        return None
    parse = deserializer

    def decode(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:  # "Error parsing message with type 'X': <reason>"
            return Undecodable(str(exc).rpartition(": ")[2] or "corrupt encoding")

    return decode


def _check_decoded(request: Any) -> None:
    if isinstance(request, Undecodable):
        raise InvalidRequestError("request", f"the message cannot be decoded: {request.reason}")


async def _abort_for(exc: Exception, context: Any, method: str) -> None:
    if isinstance(exc, SteeringError):
        await context.abort(status_of(exc), str(exc))
    log.exception("unexpected error in %s", method)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


class ErrorInterceptor(aio.ServerInterceptor):
    """Maps exceptions to status codes; undecodable requests are INVALID_ARGUMENT.

    Streaming handlers are driven here with `context.write` and closed in `finally`, so a
    client that leaves mid-stream always cancels inside this code and the handler's own cleanup
    runs at once, never later when the garbage collector finalises an abandoned generator.
    """

    def __init__(self, on_refused: OnRefused | None = None) -> None:
        self._on_refused = on_refused
        self._stopping = asyncio.Event()
        self._watching = 0  # streams that end only when the caller leaves (a health Watch)

    async def end_streams(self, timeout: float = 1.0) -> None:
        """Before the server stops: end the streams that never end by themselves (a health
        Watch) with UNAVAILABLE, rather than leave them to the server's stop to cancel (which
        gRPC at times logs as an unhandled error)."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        while self._watching and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def _refused(self, method: str, request: Any) -> None:
        if isinstance(request, Undecodable) and self._on_refused is not None:
            self._on_refused(method, grpc.StatusCode.INVALID_ARGUMENT)
        _check_decoded(request)

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        deserializer = lenient(handler.request_deserializer)
        if handler.unary_unary is not None:
            inner_unary = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                try:
                    self._refused(method, request)
                    return await inner_unary(request, context)
                except aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort_for(exc, context, method)

            return handler._replace(unary_unary=unary, request_deserializer=deserializer)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: aio.ServicerContext[Any, Any]) -> None:
                try:
                    self._refused(method, request)
                    await self._drive(inner_stream(request, context), context)
                except aio.AbortError:
                    raise
                except Exception as exc:
                    await _abort_for(exc, context, method)

            return handler._replace(unary_stream=stream, request_deserializer=deserializer)
        return handler

    async def _drive(self, produced: Any, context: aio.ServicerContext[Any, Any]) -> None:
        """Run a streaming handler: an async generator (its items written, then closed) or a
        coroutine that writes for itself (like the health service's Watch), until the server
        stops."""
        if inspect.isasyncgen(produced):
            async with aclosing(produced):
                async for item in produced:
                    await context.write(item)
            return
        task = asyncio.ensure_future(produced)
        stop = asyncio.ensure_future(self._stopping.wait())
        self._watching += 1
        try:
            await asyncio.wait((task, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._watching -= 1
            stop.cancel()
            task.cancel()  # no-op once done; else the caller left or the server stops
        if task.done() and not task.cancelled():
            task.result()  # its exception, if any
            return
        raise EngineClosedError("the server is shutting down")


OPEN_METHODS = ("/grpc.health.v1.Health/",)


class AuthInterceptor(aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>` with one of `tokens` (health checks excepted)."""

    def __init__(self, tokens: Sequence[str], on_refused: OnRefused | None = None) -> None:
        self._tokens = [token.encode() for token in tokens]
        self._on_refused = on_refused

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
        return _deny(handler, details.method, self._on_refused)


def _deny(handler: Handler, method: str, on_refused: OnRefused | None) -> Handler:
    async def refuse(request: Any, context: Any) -> Any:
        if on_refused is not None:
            on_refused(method, grpc.StatusCode.UNAUTHENTICATED)
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
