"""The servicer's accounting: a call whose deadline passed counts as deadline_exceeded, even
when its handler finished (gRPC then sends the caller DEADLINE_EXCEEDED, not the answer)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from steering.frontend import TextChunk
from steering.requests import FinishReason
from steering_proto.v1 import steering_pb2 as pb
from steering_server.grpc_api.servicer import SteeringServicer
from steering_server.metrics import Metrics


class Context:
    """A call context whose deadline is `remaining` seconds away (negative: passed)."""

    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


class FrontEnd:
    closed = False

    async def generate(self, request: Any) -> AsyncIterator[TextChunk]:
        yield TextChunk((5,), "a", FinishReason.LENGTH, 2, 1)

    async def search(
        self, query: str, *, sae: str = "", limit: int = 0, by: Any = None
    ) -> list[Any]:
        return []


def _servicer() -> tuple[SteeringServicer, Metrics]:
    metrics = Metrics()
    servicer = SteeringServicer(metrics)
    servicer.ready(FrontEnd())  # type: ignore[arg-type]
    return servicer, metrics


def _count(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def _stream(servicer: SteeringServicer, context: Context) -> None:
    request = pb.GenerateRequest(prompt="Hi")
    async for _ in servicer.Generate(request, context):  # type: ignore[arg-type]
        pass


def test_a_call_finished_after_its_deadline_counts_as_deadline_exceeded() -> None:
    servicer, metrics = _servicer()
    late, timely = Context(-0.01), Context(5.0)
    search = pb.SearchFeaturesRequest(query="sea")
    asyncio.run(servicer.SearchFeatures(search, late))  # type: ignore[arg-type]
    asyncio.run(servicer.SearchFeatures(search, timely))  # type: ignore[arg-type]
    asyncio.run(_stream(servicer, late))
    asyncio.run(_stream(servicer, timely))
    found = "steering_discovery_requests_total"
    assert _count(metrics, found, rpc="SearchFeatures", outcome="deadline_exceeded") == 1
    assert _count(metrics, found, rpc="SearchFeatures", outcome="ok") == 1
    generated = "steering_requests_total"
    assert _count(metrics, generated, outcome="deadline_exceeded") == 1
    assert _count(metrics, generated, outcome="ok") == 1
