"""The SteeringService handlers: convert, hand to the front end, stream back, record the outcome."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, TypeVar

from grpc import aio

from steering.errors import EngineClosedError, SteeringError
from steering.frontend import FrontEnd, TextChunk, score, sweep
from steering_proto.v1 import steering_pb2 as pb
from steering_proto.v1 import steering_pb2_grpc as pb_grpc
from steering_server.grpc_api import convert
from steering_server.grpc_api.interceptors import status_of
from steering_server.logs import RequestRecord, log_request
from steering_server.metrics import Metrics

Context = aio.ServicerContext[Any, Any]
Response = TypeVar("Response")

# A client's deadline passes a moment before the server's (which starts when the call arrives),
# and the client then cancels: a cancel this close to the deadline is the deadline's doing.
DEADLINE_SLACK_S = 0.5


class SteeringServicer(pb_grpc.SteeringServiceServicer):
    """Registered before the model loads; answers UNAVAILABLE until `ready`."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._frontend: FrontEnd | None = None

    def ready(self, frontend: FrontEnd) -> None:
        self._frontend = frontend

    def _loaded(self) -> FrontEnd:
        if self._frontend is None:
            raise EngineClosedError("the model is still loading")
        if self._frontend.closed:
            raise EngineClosedError("the server is shutting down and takes no new calls")
        return self._frontend

    async def Generate(
        self, request: pb.GenerateRequest, context: Context
    ) -> AsyncIterator[pb.GenerateResponse]:
        start = time.perf_counter()
        request_id = request.request_id or uuid.uuid4().hex
        outcome = "internal"
        first_at: float | None = None  # when the first token was sent
        last_at: float | None = None  # when the latest token was sent
        final: TextChunk | None = None  # the latest chunk: its token counts
        try:
            frontend = self._loaded()
            text_request = convert.text_request(request, request_id)
            async with aclosing(frontend.generate(text_request)) as chunks:
                async for chunk in chunks:
                    if chunk.token_ids:
                        now = time.perf_counter()
                        self._observe_latency(start, last_at, now, len(chunk.token_ids))
                        first_at, last_at = first_at or now, now
                    final = chunk
                    yield convert.response(chunk)
            outcome = _finished(context)
        except SteeringError as exc:
            outcome = status_of(exc).name.lower()
            raise
        except (asyncio.CancelledError, GeneratorExit):  # the caller left (or its deadline passed)
            outcome = _left(context)
            raise
        finally:
            duration = time.perf_counter() - start
            self.metrics.on_finished(outcome, duration)
            log_request(
                RequestRecord(
                    request_id=request_id,
                    rpc="Generate",
                    outcome=outcome,
                    prompt_tokens=final.prompt_tokens if final else 0,
                    completion_tokens=final.completion_tokens if final else 0,
                    time_to_first_token_s=None if first_at is None else first_at - start,
                    duration_s=duration,
                )
            )

    def _observe_latency(self, start: float, last: float | None, now: float, tokens: int) -> None:
        if last is None:
            self.metrics.time_to_first_token.observe(now - start)
            tokens -= 1
            last = now
        for _ in range(tokens):  # tokens merged into one chunk share the gap since the last one
            self.metrics.inter_token_latency.observe((now - last) / max(tokens, 1))

    async def DescribeModel(
        self, request: pb.DescribeModelRequest, context: Context
    ) -> pb.DescribeModelResponse:
        return convert.description(self._loaded().describe())

    async def Inspect(self, request: pb.InspectRequest, context: Context) -> pb.InspectResponse:
        async def call(request_id: str) -> tuple[pb.InspectResponse, int]:
            frontend = self._loaded()
            tokens = await frontend.inspect(convert.inspect_request(request, request_id))
            self.metrics.inspected_tokens.inc(len(tokens))
            return convert.inspect_response(tokens), len(tokens)

        return await self._unary("Inspect", context, call)

    async def Contrast(self, request: pb.ContrastRequest, context: Context) -> pb.ContrastResponse:
        async def call(request_id: str) -> tuple[pb.ContrastResponse, int]:
            frontend = self._loaded()
            toward_a, toward_b = await frontend.contrast(convert.contrast_request(request))
            return convert.contrast_response(toward_a, toward_b), 0

        return await self._unary("Contrast", context, call)

    async def SearchFeatures(
        self, request: pb.SearchFeaturesRequest, context: Context
    ) -> pb.SearchFeaturesResponse:
        async def call(request_id: str) -> tuple[pb.SearchFeaturesResponse, int]:
            frontend = self._loaded()
            matches = await frontend.search(
                request.query, sae=request.sae, limit=request.limit, by=convert.search_by(request)
            )
            return convert.search_response(matches), 0

        return await self._unary("SearchFeatures", context, call)

    async def DescribeFeature(
        self, request: pb.DescribeFeatureRequest, context: Context
    ) -> pb.FeatureCard:
        async def call(request_id: str) -> tuple[pb.FeatureCard, int]:
            card = await self._loaded().describe_feature(convert.feature_card_request(request))
            return convert.feature_card(card), 0

        return await self._unary("DescribeFeature", context, call)

    async def Score(self, request: pb.ScoreRequest, context: Context) -> pb.ScoreResponse:
        async def call(request_id: str) -> tuple[pb.ScoreResponse, int]:
            scored = await score(self._loaded(), convert.score_request(request, request_id))
            return convert.score_response(scored), scored.prompt_tokens + len(scored.tokens)

        return await self._unary("Score", context, call)

    async def Sweep(
        self, request: pb.SweepRequest, context: Context
    ) -> AsyncIterator[pb.SweepPoint]:
        """Every strength runs together, so the points are all ready at once; streamed in the
        request's order (strength 0 first when the request lacks it)."""

        async def call(request_id: str) -> tuple[list[pb.SweepPoint], int]:
            points = await sweep(self._loaded(), convert.sweep_request(request, request_id))
            return [convert.sweep_point(p) for p in points], 0

        for point in await self._unary("Sweep", context, call):
            yield point

    async def _unary(
        self,
        rpc: str,
        context: Context,
        call: Callable[[str], Awaitable[tuple[Response, int]]],
    ) -> Response:
        """Run a unary discovery call, counting its outcome and logging one line for it."""
        start, request_id = time.perf_counter(), uuid.uuid4().hex
        outcome, tokens = "internal", 0
        try:
            response, tokens = await call(request_id)
            outcome = _finished(context)
            return response
        except SteeringError as exc:
            outcome = status_of(exc).name.lower()
            raise
        except asyncio.CancelledError:
            outcome = _left(context)
            raise
        finally:
            duration = time.perf_counter() - start
            self.metrics.on_discovery(rpc, outcome, duration)
            log_request(RequestRecord(request_id, rpc, outcome, tokens, 0, None, duration))


def _finished(context: Context) -> str:
    """The outcome of a call whose handler finished: ok, unless its deadline passed first (gRPC
    then answers DEADLINE_EXCEEDED, and the caller never sees the answer)."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return "deadline_exceeded"
    return "ok"


def _left(context: Context) -> str:
    """The outcome of a call whose caller left: its deadline passed, or it cancelled."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= DEADLINE_SLACK_S:
        return "deadline_exceeded"
    return "cancelled"
