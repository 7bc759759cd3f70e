"""The SteeringService handlers: parse, hand to the bridge, stream back, record the outcome."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from grpc import aio

from steering.errors import EngineClosedError, SteeringError
from steering.hooks import SaeAttachment
from steering_proto.v1 import steering_pb2 as pb
from steering_proto.v1 import steering_pb2_grpc as pb_grpc
from steering_server import convert
from steering_server.bridge import Bridge
from steering_server.errors import status_of
from steering_server.metrics import Metrics

Context = aio.ServicerContext[Any, Any]

# A client's deadline passes a moment before the server's (which starts when the call arrives),
# and the client then cancels: a cancel this close to the deadline is the deadline's doing.
DEADLINE_SLACK_S = 0.5


@dataclass(frozen=True)
class ModelDescription:
    name: str
    num_layers: int
    d_model: int
    vocab_size: int
    attachments: tuple[SaeAttachment, ...]


class SteeringServicer(pb_grpc.SteeringServiceServicer):
    """Registered before the model loads; answers UNAVAILABLE until `ready`."""

    def __init__(self, metrics: Metrics, stop_limits: convert.StopLimits) -> None:
        self.metrics = metrics
        self.stop_limits = stop_limits
        self._bridge: Bridge | None = None
        self._description: ModelDescription | None = None

    def ready(self, bridge: Bridge, description: ModelDescription) -> None:
        self._bridge, self._description = bridge, description

    def _loaded(self) -> tuple[Bridge, ModelDescription]:
        if self._bridge is None or self._description is None:
            raise EngineClosedError("the model is still loading")
        return self._bridge, self._description

    async def Generate(
        self, request: pb.GenerateRequest, context: Context
    ) -> AsyncIterator[pb.GenerateResponse]:
        start = time.perf_counter()
        outcome = "internal"
        try:
            bridge, _ = self._loaded()
            parsed = convert.parse_generate(request, self.stop_limits)
            last = None
            async with aclosing(bridge.generate(parsed)) as chunks:
                async for chunk in chunks:
                    now = time.perf_counter()
                    self._observe_latency(start, last, now, len(chunk.token_ids))
                    last = now
                    if chunk.finish_reason is None:
                        yield convert.chunk(chunk.token_ids, chunk.text)
                    else:
                        yield convert.last_chunk(
                            chunk.token_ids,
                            chunk.text,
                            chunk.finish_reason,
                            chunk.prompt_tokens,
                            chunk.completion_tokens,
                            chunk.seed,
                        )
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
            self.metrics.on_finished(outcome, time.perf_counter() - start)

    def _observe_latency(self, start: float, last: float | None, now: float, tokens: int) -> None:
        if not tokens:
            return
        if last is None:
            self.metrics.time_to_first_token.observe(now - start)
            tokens -= 1
            last = now
        for _ in range(tokens):  # tokens merged into one chunk share the gap since the last one
            self.metrics.inter_token_latency.observe((now - last) / max(tokens, 1))

    async def DescribeModel(
        self, request: pb.DescribeModelRequest, context: Context
    ) -> pb.DescribeModelResponse:
        bridge, d = self._loaded()
        return pb.DescribeModelResponse(
            model=pb.ModelInfo(
                name=d.name, num_layers=d.num_layers, d_model=d.d_model, vocab_size=d.vocab_size
            ),
            saes=[
                pb.SaeInfo(
                    name=a.name,
                    layer=a.layer,
                    d_sae=a.sae.d_sae,
                    d_model=a.sae.d_model,
                    site=a.site,
                )
                for a in d.attachments
            ],
            limits=convert.limits_message(bridge.engine.config.limits, self.stop_limits),
        )
