"""Log-probabilities of generated tokens against a plain forward of the whole text, written
the long way: the model reads prompt + generated tokens without a cache (steered through the
full SAE by a plain hook), and `log_softmax` of its logits at each position is the answer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from steering import EditMode, FeatureEdit, LoadedModel, SaeAttachment, load_model
from steering.demo.toy import random_sae
from steering.engine import Engine
from steering.engine.logprobs import Logprobs, queue_logprobs, read_logprobs
from steering.engine.sampling import RowSampler
from steering.requests import GenerationRequest, SamplingParams
from steering.steer.plan import Readback
from tests.reference import reference_row

TOL = 1e-3
PROMPTS = ["Tell me about the sea", "A small bird sang", "Hi"]


@pytest.fixture(params=["gemma2", "gemma3"])
def lm(request: pytest.FixtureRequest, model_folders: dict[str, Path]) -> LoadedModel:
    return load_model(model_folders[request.param], dtype=torch.float32)


def _attachment(lm: LoadedModel) -> SaeAttachment:
    d = int(lm.model.config.get_text_config().hidden_size)
    return SaeAttachment("early", random_sae(d, 128, seed=1, threshold=0.02), layer=1)


def _reference(
    lm: LoadedModel,
    sae: SaeAttachment,
    ids: Sequence[int],
    edits: Sequence[FeatureEdit],
    new: int,
) -> torch.Tensor:
    """log_softmax (new, V) at the positions that produced the last `new` tokens of `ids`."""
    x_ids = torch.tensor([list(ids)])
    steerable = ~torch.isin(x_ids[0], lm.special_ids)

    def steer(module: Any, args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        row = reference_row(hidden[0], sae.sae, list(edits), steerable).to(hidden.dtype)[None]
        return (row, *output[1:]) if isinstance(output, tuple) else row

    layer = lm.model.get_decoder().layers[sae.layer]
    handle = layer.register_forward_hook(steer) if edits else None
    try:
        with torch.no_grad():
            logits = lm.model(input_ids=x_ids, use_cache=False).logits[0].float()
    finally:
        if handle is not None:
            handle.remove()
    return torch.log_softmax(logits, dim=-1)[len(ids) - 1 - new : len(ids) - 1]


def _run(engine: Engine, requests: list[GenerationRequest]) -> list[tuple[list[int], list[Any]]]:
    handles = [engine.add(r) for r in requests]
    for _ in range(500):
        if engine.idle:
            break
        engine.step()
    out = []
    for handle in handles:
        tokens: list[int] = []
        logprobs: list[Any] = []
        while (chunk := handle.channel.take(0)) is not None:
            tokens += chunk.token_ids
            logprobs += chunk.logprobs
        out.append((tokens, logprobs))
    return out


def _check(expected: torch.Tensor, tokens: list[int], logprobs: list[Logprobs], k: int) -> None:
    assert len(logprobs) == len(tokens) == expected.shape[0]
    for t, (token, got) in enumerate(zip(tokens, logprobs, strict=True)):
        row = expected[t]
        assert got.logprob == pytest.approx(float(row[token]), abs=TOL)
        values, ids = row.topk(k)
        assert [i for i, _ in got.top] == ids.tolist()
        assert [v for _, v in got.top] == pytest.approx(values.tolist(), abs=TOL)


SAMPLING = {
    "greedy": {},
    "sampled": {"temperature": 1.7, "top_k": 4, "top_p": 0.9, "seed": 3},
}


@pytest.mark.parametrize("steered", [False, True], ids=["unsteered", "steered"])
@pytest.mark.parametrize("mode", list(SAMPLING))
def test_logprobs_equal_log_softmax_of_a_plain_forward(
    lm: LoadedModel, mode: str, steered: bool
) -> None:
    sae = _attachment(lm)
    engine = Engine.from_loaded(lm, [sae])
    edits = (FeatureEdit("early", 5, EditMode.SET, 30.0),) if steered else ()
    n, k = 10, 5
    requests = []
    for i, prompt in enumerate(PROMPTS):
        sampling = SamplingParams(
            max_new_tokens=n, ignore_eos=True, top_logprobs=k - i, **SAMPLING[mode]
        )
        requests.append(GenerationRequest(tuple(lm.tokenizer(prompt).input_ids), sampling, edits))
    plain = GenerationRequest(requests[0].prompt_ids, SamplingParams(max_new_tokens=n), edits)
    results = _run(engine, [*requests, plain])
    for request, (tokens, logprobs) in zip(requests, results, strict=False):
        expected = _reference(lm, sae, request.prompt_ids + tuple(tokens), edits, len(tokens))
        _check(expected, tokens, logprobs, request.sampling.top_logprobs or 0)
    assert results[-1][1] == []  # a row that did not ask gets none


def test_asking_for_logprobs_changes_no_token(lm: LoadedModel) -> None:
    engine = Engine.from_loaded(lm)
    prompt = tuple(lm.tokenizer(PROMPTS[0]).input_ids)
    sampled = SamplingParams(max_new_tokens=12, ignore_eos=True, temperature=1.2, seed=5)
    asked = replace(sampled, top_logprobs=3)
    without, with_ = _run(engine, [GenerationRequest(prompt, s) for s in (sampled, asked)])
    assert without[0] == with_[0] and len(with_[1]) == 12


def test_one_copy_to_the_host_per_step_with_logprobs(
    lm: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asking for logprobs (sampled rows included) adds no device-to-host copy to a step."""
    engine = Engine.from_loaded(lm)
    prompt = tuple(lm.tokenizer(PROMPTS[0]).input_ids)
    fetches = []
    real_fetch = Readback.fetch

    def fetch(self: Readback) -> None:
        fetches.append(1)
        real_fetch(self)

    def no_int(self: RowSampler, logits: torch.Tensor) -> int:
        raise AssertionError("a draw copied its token to the host on its own")

    monkeypatch.setattr(Readback, "fetch", fetch)
    monkeypatch.setattr(RowSampler, "draw", no_int)
    sampling = SamplingParams(
        max_new_tokens=6, ignore_eos=True, temperature=1.0, seed=1, top_logprobs=4
    )
    engine.add(GenerationRequest(prompt, sampling))
    engine.add(GenerationRequest(prompt, SamplingParams(max_new_tokens=6, top_logprobs=2)))
    steps = 0
    while not engine.idle:
        engine.step()
        steps += 1
    assert len(fetches) == 2 + 5  # two prefills, then one decode step per remaining token


def test_top_tokens_rank_by_value_then_lower_id() -> None:
    logits = torch.tensor([[0.5, 2.0, -1.0, 2.0, 0.5, -3.0, 2.0], [0.0, 1, 1, 3, 1, 0, 0]])
    readback = Readback()
    queue_logprobs(readback, logits, torch.tensor([1, 5]), [0, 1], 3)
    readback.fetch()
    first, second = read_logprobs(readback, [3, 2])
    assert [t for t, _ in first.top] == [1, 3, 6]
    assert [t for t, _ in second.top] == [3, 1]
    expected = torch.log_softmax(logits, dim=-1)
    assert first.logprob == pytest.approx(float(expected[0, 1]))
    assert second.logprob == pytest.approx(float(expected[1, 5]))
    assert [v for _, v in second.top] == pytest.approx(expected[1, [3, 1]].tolist())
