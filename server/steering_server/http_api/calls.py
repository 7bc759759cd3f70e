"""One call's bookkeeping, as gRPC's servicer keeps it: the outcome counted in the same metric
families, latency observed per token, and one request log line when it ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from typing import TypeVar

from steering.errors import SteeringError
from steering.frontend import FrontEnd, TextChunk
from steering.requests import TextRequest
from steering_server.http_api.errors import ProblemError, outcome_of, problem_of
from steering_server.logs import RequestRecord, log_request
from steering_server.metrics import Metrics

T = TypeVar("T")


def outcome_of_exception(exc: BaseException) -> str:
    if isinstance(exc, SteeringError):
        return outcome_of(problem_of(exc, None).status)
    if isinstance(exc, ProblemError):
        return outcome_of(exc.status)
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return "cancelled"
    return "internal"


class GenerateCall:
    """A completion call: counted in `steering_requests_total` like a gRPC Generate."""

    def __init__(self, metrics: Metrics, request_id: str, route: str) -> None:
        self.metrics = metrics
        self.request_id = request_id
        self.route = route
        self.start = time.perf_counter()
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.final: TextChunk | None = None
        self.ended = False

    async def chunks(self, frontend: FrontEnd, request: TextRequest) -> AsyncIterator[TextChunk]:
        """The request's chunks from the front end; the call ends with them."""
        try:
            async with aclosing(frontend.generate(request)) as chunks:
                async for chunk in chunks:
                    if chunk.token_ids:
                        self._observe(time.perf_counter(), len(chunk.token_ids))
                    self.final = chunk
                    yield chunk
        except BaseException as exc:
            self.end(outcome_of_exception(exc))
            raise
        self.end("ok")

    def _observe(self, now: float, tokens: int) -> None:
        last = self.last_at
        if last is None:
            self.metrics.time_to_first_token.observe(now - self.start)
            tokens, last = tokens - 1, now
        for _ in range(tokens):
            self.metrics.inter_token_latency.observe((now - last) / max(tokens, 1))
        self.first_at, self.last_at = self.first_at or now, now

    def end(self, outcome: str) -> None:
        """Count and log the call once, whichever way it ended."""
        if self.ended:
            return
        self.ended = True
        duration = time.perf_counter() - self.start
        self.metrics.on_finished(outcome, duration)
        final = self.final
        ttft = None if self.first_at is None else self.first_at - self.start
        log_request(
            RequestRecord(
                self.request_id,
                self.route,
                outcome,
                final.prompt_tokens if final else 0,
                final.completion_tokens if final else 0,
                ttft,
                duration,
            )
        )


async def discovery_call(
    metrics: Metrics, rpc: str, request_id: str, work: Awaitable[tuple[T, int]]
) -> T:
    """A discovery call (Inspect, SearchFeatures, Contrast), counted and logged as over gRPC."""
    start, outcome, tokens = time.perf_counter(), "internal", 0
    try:
        answer, tokens = await work
        outcome = "ok"
        return answer
    except BaseException as exc:
        outcome = outcome_of_exception(exc)
        raise
    finally:
        duration = time.perf_counter() - start
        metrics.on_discovery(rpc, outcome, duration)
        log_request(RequestRecord(request_id, rpc, outcome, tokens, 0, None, duration))
