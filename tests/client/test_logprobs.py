"""Log-probabilities in the client: `top_logprobs=` is sent (unset by default), chunks and
completions carry them, and `generate --top-logprobs N` prints them as a table."""

from __future__ import annotations

import pytest

from steering_client import Completion, SteeringClient, TokenLogprob, TokenLogprobs
from steering_client.cli import main
from steering_proto.v1 import steering_pb2 as pb
from tests.client.fake_server import FakeSteering


def _scored(token_id: int, logprob: float) -> pb.TokenLogprobs:
    top = [
        pb.TopLogprob(token_id=token_id, text=f"t{token_id}", logprob=logprob),
        pb.TopLogprob(token_id=99, text="other", logprob=-3.5),
    ]
    return pb.TokenLogprobs(logprob=logprob, top=top)


SCORED = (
    pb.GenerateResponse(
        token_ids=[10, 11], text="Hello", logprobs=[_scored(10, -0.25), _scored(11, -0.5)]
    ),
    pb.GenerateResponse(
        token_ids=[12],
        text="!",
        logprobs=[_scored(12, -1.0)],
        finish_reason=pb.FINISH_REASON_LENGTH,
        usage=pb.Usage(prompt_tokens=3, completion_tokens=3),
        seed=1,
    ),
)


def test_top_logprobs_is_sent_and_read(fake: FakeSteering, target: str) -> None:
    fake.chunks = SCORED
    with SteeringClient(target) as client:
        chunks = list(client.generate("The sea", top_logprobs=2))
        completion = Completion.from_chunks(client.generate("The sea", top_logprobs=0))
    first, second = fake.requests
    assert isinstance(first, pb.GenerateRequest) and isinstance(second, pb.GenerateRequest)
    assert first.sampling.HasField("top_logprobs") and first.sampling.top_logprobs == 2
    assert second.sampling.HasField("top_logprobs") and second.sampling.top_logprobs == 0
    assert [len(c.logprobs) for c in chunks] == [2, 1]
    assert chunks[0].logprobs[0] == TokenLogprobs(
        -0.25, (TokenLogprob(10, "t10", -0.25), TokenLogprob(99, "other", -3.5))
    )
    assert [t.logprob for t in completion.logprobs] == [-0.25, -0.5, -1.0]


def test_top_logprobs_out_of_range_names_the_field(fake: FakeSteering, target: str) -> None:
    with SteeringClient(target) as client, pytest.raises(ValueError, match="top_logprobs"):
        client.generate_text("hi", top_logprobs=-1)
    assert fake.requests == []


def test_cli_top_logprobs_prints_a_table(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.chunks = SCORED
    assert main(["--target", target, "generate", "The sea", "--top-logprobs", "2"]) == 0
    out, err = capsys.readouterr()
    assert out == "Hello!\n"
    (request,) = fake.requests
    assert isinstance(request, pb.GenerateRequest) and request.sampling.top_logprobs == 2
    lines = err.splitlines()
    assert lines[0].split() == ["#", "id", "token", "logprob", "most", "likely"]
    assert lines[1].split() == [
        "0",
        "10",
        "'t10'",
        "-0.250",
        "'t10'",
        "-0.250",
        "'other'",
        "-3.500",
    ]
    assert lines[3].split()[:4] == ["2", "12", "'t12'", "-1.000"]
