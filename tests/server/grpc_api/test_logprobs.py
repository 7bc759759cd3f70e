"""Generate's log-probabilities over gRPC: one entry per token, against a plain forward of the
text through a separately loaded model; the limit is described and enforced."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import torch

from steering import load_model
from steering_proto.v1 import steering_pb2 as pb
from tests.server.harness import ServerThread, request


def _plain_logprobs(srv: ServerThread, ids: list[int], new: int) -> torch.Tensor:
    lm = load_model(Path(srv.settings.model), dtype=torch.float32)
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
    return torch.log_softmax(logits, dim=-1)[len(ids) - 1 - new : len(ids) - 1]


def test_generate_reports_logprobs_per_token(gemma2_server: ServerThread) -> None:
    prompt = "Tell me about the sea"
    message = request(prompt, max_new_tokens=6, ignore_eos=True, top_logprobs=3)
    chunks = gemma2_server.generate(message)
    tokens = [t for c in chunks for t in c.token_ids]
    logprobs = [lp for c in chunks for lp in c.logprobs]
    assert all(len(c.logprobs) == len(c.token_ids) for c in chunks)
    tokenizer = gemma2_server.app.frontend.tokenizer
    ids = list(tokenizer(prompt).input_ids) + tokens
    expected = _plain_logprobs(gemma2_server, ids, len(tokens))
    for t, (token, got) in enumerate(zip(tokens, logprobs, strict=True)):
        assert got.logprob == pytest.approx(float(expected[t, token]), abs=1e-3)
        values, top = expected[t].topk(3)
        assert [e.token_id for e in got.top] == top.tolist()
        assert [e.logprob for e in got.top] == pytest.approx(values.tolist(), abs=1e-3)
        assert [e.text for e in got.top] == [tokenizer.decode([i]) for i in top.tolist()]
        assert got.top[0].token_id == token  # greedy: the most likely token


def test_generate_without_top_logprobs_reports_none(gemma2_server: ServerThread) -> None:
    chunks = gemma2_server.generate(request("The sea", max_new_tokens=3))
    assert not any(c.logprobs for c in chunks)
    chunks = gemma2_server.generate(request("The sea", max_new_tokens=3, top_logprobs=0))
    assert [len(c.logprobs) for c in chunks] == [len(c.token_ids) for c in chunks]
    assert all(not lp.top and lp.logprob <= 0 for c in chunks for lp in c.logprobs)


def test_top_logprobs_limit_is_described_and_enforced(gemma2_server: ServerThread) -> None:
    limits = gemma2_server.stub.DescribeModel(pb.DescribeModelRequest()).limits
    assert limits.max_top_logprobs == 20
    with pytest.raises(grpc.RpcError) as err:
        gemma2_server.generate(request("The sea", top_logprobs=21))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("sampling.top_logprobs"), err.value.details()
