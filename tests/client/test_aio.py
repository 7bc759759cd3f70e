"""The asyncio client against the fake server: same requests, same chunks, same errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import TypeVar

import grpc
import pytest

from steering_client import AsyncSteeringClient, Chunk, Edit, SteeringClientError, Usage
from steering_proto.v1 import steering_pb2 as pb
from tests.client.fake_server import FakeSteering

T = TypeVar("T")


def run_with(target: str, body: Callable[[AsyncSteeringClient], Awaitable[T]], **kw: object) -> T:
    """Run `body(client)` on a fresh event loop, with a client made and closed inside it."""

    async def main() -> T:
        async with AsyncSteeringClient(target, **kw) as client:  # type: ignore[arg-type]
            return await body(client)

    return asyncio.run(main())


def test_generate_streams_and_sends_the_request(fake: FakeSteering, target: str) -> None:
    async def body(client: AsyncSteeringClient) -> list[Chunk]:
        stream = client.generate(
            chat=[("user", "Hi")], edits=[Edit.add("res2", 4, 2.0)], temperature=1.0, seed=7
        )
        return [chunk async for chunk in stream]

    chunks = run_with(target, body, token="tok")
    assert "".join(c.text for c in chunks) == "Hello, world!"
    assert [c.finish_reason for c in chunks] == [None, None, "length"]
    assert (chunks[-1].usage, chunks[-1].seed) == (Usage(3, 4), 1234)
    (request,) = fake.requests
    assert isinstance(request, pb.GenerateRequest)
    assert [(m.role, m.content) for m in request.chat.messages] == [("user", "Hi")]
    assert list(request.edits) == [Edit.add("res2", 4, 2.0).to_proto()]
    assert (request.sampling.temperature, request.sampling.seed) == (1.0, 7)
    assert fake.metadata[0]["authorization"] == "Bearer tok"


def test_generate_text_and_describe(target: str) -> None:
    async def body(client: AsyncSteeringClient) -> tuple[str, str]:
        text = await client.generate_text("hi")
        desc = await client.describe()
        return text, desc.saes[0].name

    assert run_with(target, body) == ("Hello, world!", "res2")


def test_errors_map_to_steering_client_error(fake: FakeSteering, target: str) -> None:
    fake.abort = (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")

    async def body(client: AsyncSteeringClient) -> list[SteeringClientError]:
        caught = []
        for call in (lambda: client.generate_text("hi"), client.describe):
            with pytest.raises(SteeringClientError) as info:
                await call()
            caught.append(info.value)
        return caught

    errors = run_with(target, body)
    assert [(e.code, e.details) for e in errors] == [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
    ] * 2


def test_malformed_request_raises_at_call_time(fake: FakeSteering, target: str) -> None:
    async def body(client: AsyncSteeringClient) -> None:
        with pytest.raises(ValueError, match="exactly one of prompt or chat"):
            client.generate()

    run_with(target, body)
    assert fake.requests == []


def test_closing_the_stream_early_cancels_the_call(fake: FakeSteering, target: str) -> None:
    fake.hang_after = 1

    async def body(client: AsyncSteeringClient) -> str:
        async with aclosing(client.generate("hi")) as stream:  # type: ignore[type-var]
            async for chunk in stream:
                return chunk.text
        return ""

    assert run_with(target, body) == "Hello"
    assert fake.ended.wait(timeout=3.0)  # uncancelled, the fake would hold the call for 10 s
