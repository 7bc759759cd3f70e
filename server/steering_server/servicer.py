"""The SteeringService handlers: convert, hand to the front end, stream back, record the outcome."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from grpc import aio

from steering.errors import EngineClosedError, SteeringError
from steering.frontend import FrontEnd, TextChunk
from steering_proto.v1 import steering_pb2 as pb
from steering_proto.v1 import steering_pb2_grpc as pb_grpc
from steering_server import convert
from steering_server.errors import status_of
from steering_server.logs import RequestRecord, log_request
from steering_server.metrics import Metrics

Context = aio.ServicerContext[Any, Any]

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
            outcome = "ok"
        except SteeringError as exc:
            outcome = status_of(exc).name.lower()
            raise
        except (asyncio.CancelledError, GeneratorExit):  # the caller left (or its deadline passed)
            remaining = context.time_remaining()
            outcome = (
                "deadline_exceeded"
                if remaining is not None and remaining <= DEADLINE_SLACK_S
                else "cancelled"
            )
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
