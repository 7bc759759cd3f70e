"""The blocking client against the fake server: what it sends, what it reassembles, how it fails."""

from __future__ import annotations

import re

import grpc
import pytest

from steering_client import (
    Chunk,
    Completion,
    Edit,
    ModelDescription,
    SteeringClient,
    SteeringClientError,
    Usage,
)
from steering_proto.v1 import steering_pb2 as pb
from tests.client.fake_server import FakeSteering


def test_generate_sends_every_field(fake: FakeSteering, target: str) -> None:
    edits = [Edit.set("res2", 17, 8.0), Edit.ablate("res2", 3, only_when_active=True)]
    with SteeringClient(target) as client:
        list(
            client.generate(
                "The sea is",
                edits=edits,
                max_new_tokens=5,
                temperature=0.75,
                top_k=40,
                top_p=0.9,
                seed=2**40 + 1,
                stop=["\n", "END"],
                ignore_eos=True,
                request_id="req-1",
            )
        )
    (request,) = fake.requests
    assert isinstance(request, pb.GenerateRequest)
    assert request.WhichOneof("input") == "prompt"
    assert request.prompt == "The sea is"
    assert list(request.edits) == [e.to_proto() for e in edits]
    s = request.sampling
    assert (s.max_new_tokens, s.top_k, s.ignore_eos) == (5, 40, True)
    assert s.temperature == pytest.approx(0.75)
    assert s.top_p == pytest.approx(0.9)
    assert s.HasField("seed") and s.seed == 2**40 + 1
    assert list(s.stop) == ["\n", "END"]
    assert request.request_id == "req-1"
    assert "authorization" not in fake.metadata[0]


def test_defaults_leave_seed_unset_and_numbers_zero(fake: FakeSteering, target: str) -> None:
    with SteeringClient(target) as client:
        client.generate_text("hi")
    (request,) = fake.requests
    assert isinstance(request, pb.GenerateRequest)
    assert not request.sampling.HasField("seed")
    assert request.sampling == pb.SamplingParams()
    assert len(request.edits) == 0


def test_chunks_arrive_in_order_and_only_the_last_carries_the_summary(target: str) -> None:
    with SteeringClient(target) as client:
        chunks = list(client.generate("The sea is"))
    assert [c.text for c in chunks] == ["Hello", ", world", "!"]
    assert [c.token_ids for c in chunks] == [(10, 11), (12,), (13,)]
    assert [c.is_last for c in chunks] == [False, False, True]
    assert chunks[0] == Chunk((10, 11), "Hello")  # no finish reason, usage or seed yet
    last = chunks[-1]
    assert (last.finish_reason, last.usage, last.seed) == ("length", Usage(3, 4), 1234)
    whole = Completion.from_chunks(chunks)
    assert whole == Completion((10, 11, 12, 13), "Hello, world!", "length", Usage(3, 4), 1234)


def test_generate_text_joins_the_stream(target: str) -> None:
    with SteeringClient(target) as client:
        assert client.generate_text("x") == "Hello, world!"


@pytest.mark.parametrize(
    "reason", [pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_EOS, pb.FINISH_REASON_STOP, 9]
)
def test_finish_reasons_read_as_words(reason: int) -> None:
    chunk = Chunk.from_proto(pb.GenerateResponse(finish_reason=reason))  # type: ignore[arg-type]
    expected = {1: "length", 2: "eos", 3: "stop"}.get(reason, "unknown")
    assert chunk.finish_reason == expected


def test_chat_accepts_pairs_and_dicts(fake: FakeSteering, target: str) -> None:
    with SteeringClient(target) as client:
        client.generate_text(
            chat=[("user", "Hi"), {"role": "model", "content": "Hello"}, ("user", "Sing")]
        )
    (request,) = fake.requests
    assert isinstance(request, pb.GenerateRequest)
    assert request.WhichOneof("input") == "chat"
    got = [(m.role, m.content) for m in request.chat.messages]
    assert got == [("user", "Hi"), ("model", "Hello"), ("user", "Sing")]


@pytest.mark.parametrize(
    ("prompt", "chat", "why"),
    [
        (None, None, "exactly one of prompt or chat"),
        ("hi", [("user", "hi")], "exactly one of prompt or chat"),
        (None, [("user", "hi", "extra")], "not a (role, content) pair"),
        (None, [{"role": "user"}], "lacks 'content'"),
    ],
)
def test_malformed_requests_fail_before_any_call(
    fake: FakeSteering, target: str, prompt: str | None, chat: list[object] | None, why: str
) -> None:
    with SteeringClient(target) as client, pytest.raises(ValueError, match=re.escape(why)):
        client.generate(prompt, chat=chat)  # type: ignore[arg-type]
    assert fake.requests == []


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"max_new_tokens": -1}, "sampling.max_new_tokens: Value out of range"),
        ({"top_k": 2**32}, "sampling.top_k: Value out of range"),
        ({"seed": -5}, "sampling.seed: Value out of range"),
    ],
)
def test_out_of_range_sampling_names_the_field(
    fake: FakeSteering, target: str, options: dict[str, int], why: str
) -> None:
    with SteeringClient(target) as client, pytest.raises(ValueError, match=re.escape(why)):
        client.generate("hi", **options)  # type: ignore[arg-type]
    assert fake.requests == []


def test_bearer_token_goes_in_metadata(fake: FakeSteering, target: str) -> None:
    fake.token = "s3cret"
    with SteeringClient(target, token="s3cret") as client:
        assert client.generate_text("hi") == "Hello, world!"
        assert client.describe().model.name == "tiny-gemma"
    assert [m["authorization"] for m in fake.metadata] == ["Bearer s3cret"] * 2


def test_missing_token_is_unauthenticated(fake: FakeSteering, target: str) -> None:
    fake.token = "s3cret"
    with SteeringClient(target) as client, pytest.raises(SteeringClientError) as caught:
        client.generate_text("hi")
    assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED


def test_invalid_argument_keeps_code_and_details(fake: FakeSteering, target: str) -> None:
    fake.abort = (grpc.StatusCode.INVALID_ARGUMENT, "edits[0].sae: unknown SAE 'nope'")
    with SteeringClient(target) as client, pytest.raises(SteeringClientError) as caught:
        list(client.generate("hi", edits=[Edit.set("nope", 1, 1.0)]))
    error = caught.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.code_name == "INVALID_ARGUMENT"
    assert error.details == "edits[0].sae: unknown SAE 'nope'"
    assert str(error) == "INVALID_ARGUMENT: edits[0].sae: unknown SAE 'nope'"
    assert isinstance(error.__cause__, grpc.RpcError)


def test_a_failure_mid_stream_follows_the_chunks_already_sent(
    fake: FakeSteering, target: str
) -> None:
    fake.abort, fake.abort_after = (grpc.StatusCode.INTERNAL, "engine failed"), 1
    received: list[str] = []
    with SteeringClient(target) as client, pytest.raises(SteeringClientError) as caught:
        for chunk in client.generate("hi"):
            received.append(chunk.text)
    assert received == ["Hello"]
    assert caught.value.code is grpc.StatusCode.INTERNAL


def test_deadline_maps_to_deadline_exceeded(fake: FakeSteering, target: str) -> None:
    fake.hang_after = 1
    with SteeringClient(target, timeout=0.3) as client, pytest.raises(SteeringClientError) as c:
        list(client.generate("hi"))
    assert c.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_leaving_the_stream_early_cancels_the_call(fake: FakeSteering, target: str) -> None:
    fake.hang_after = 1
    with SteeringClient(target) as client:
        for chunk in client.generate("hi"):
            assert chunk.text == "Hello"
            break
        # Uncancelled, the fake would hold the call for 10 s.
        assert fake.ended.wait(timeout=3.0)


def test_describe_reads_model_saes_and_limits(fake: FakeSteering, target: str) -> None:
    with SteeringClient(target) as client:
        desc = client.describe()
    assert isinstance(desc, ModelDescription)
    assert (desc.model.name, desc.model.num_layers, desc.model.d_model) == ("tiny-gemma", 6, 64)
    assert desc.model.vocab_size == 512
    assert desc.sae("res2").d_sae == 256 and desc.sae("res2").site == "resid_post"
    with pytest.raises(KeyError):
        desc.sae("res9")
    assert desc.limits.max_new_tokens == 1024
    assert desc.limits.default_max_new_tokens == 64
    assert desc.limits.max_abs_edit_value == pytest.approx(1e4)
    assert desc.limits.max_queued_requests == 1_000_000
    assert isinstance(fake.requests[0], pb.DescribeModelRequest)


def test_describe_maps_errors(fake: FakeSteering, target: str) -> None:
    fake.abort = (grpc.StatusCode.UNAVAILABLE, "draining")
    with SteeringClient(target) as client, pytest.raises(SteeringClientError) as caught:
        client.describe()
    assert (caught.value.code_name, caught.value.details) == ("UNAVAILABLE", "draining")
