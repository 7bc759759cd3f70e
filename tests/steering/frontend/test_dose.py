"""Score and Sweep through the front end, against references written the long way: a plain
forward without cache (edits applied by hand, features encoded by hand) for Score; single
greedy generations and Score calls for Sweep, and the recommendation recomputed from the points."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
import torch

from steering import EditMode, FeatureEdit
from steering.discovery.catalog import Catalog
from steering.discovery.dose import GAIN_SHARE, LOGPROB_DROP_NATS, repeat_share
from steering.engine import EngineConfig
from steering.errors import InvalidRequestError
from steering.frontend import FrontEnd, TextChunk, score, sweep
from steering.requests import (
    FeatureRef,
    Limits,
    SamplingParams,
    ScoreRequest,
    SweepRequest,
    TextRequest,
)
from tests.frontends import running_frontend
from tests.reference import reference_forward

SAES = (("early", 1, 128, 1), ("mid", 2, 96, 2))
EDITS = (FeatureEdit("early", 5, EditMode.SET, 6.0), FeatureEdit("mid", 3, EditMode.ADD, 4.0))
FEATURES = (FeatureRef("early", 5), FeatureRef("mid", 3), FeatureRef("mid", 0))
PROMPT = "Tell me about the sea"
CONTINUATION = " and the boats that sail on it, far away from the shore"


@pytest.fixture(scope="module", params=["gemma2", "gemma3"])
def front(request: pytest.FixtureRequest, model_folders: dict[str, Path]) -> Iterator[FrontEnd]:
    # Chunks of 5 tokens: the prompt and the continuation are read over several forwards.
    with running_frontend(
        model_folders[request.param], SAES, EngineConfig(prefill_tokens_per_step=5)
    ) as frontend:
        frontend.catalog = Catalog({}, typical_max={"early": {7: 4.0}})
        yield frontend


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def _reference_score(
    front: FrontEnd,
    prompt: Sequence[int],
    continuation: Sequence[int],
    edits: Sequence[FeatureEdit],
    features: Sequence[FeatureRef] = FEATURES,
) -> tuple[list[float], list[list[float]]]:
    """Per continuation token: log_softmax (float32) of the logits before it at it, and the
    features' activations at its position before their SAE's edits."""
    engine = front.engine
    ids = [*prompt, *continuation]
    seen, logits = reference_forward(
        engine.model,
        engine.hooks.attachments,
        front.special_ids,
        ids,
        [(e, 0) for e in edits],
        every_position=True,
    )
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    n = len(prompt)
    want_lp = [float(logprobs[n + k - 1, t]) for k, t in enumerate(continuation)]
    want_f = [
        [float(seen[f.sae][n + k, f.feature]) for f in features] for k in range(len(continuation))
    ]
    return want_lp, want_f


@pytest.mark.parametrize("edits", [(), EDITS], ids=["unsteered", "steered"])
def test_score_equals_the_reference(front: FrontEnd, edits: tuple[FeatureEdit, ...]) -> None:
    got = _run(score(front, ScoreRequest(PROMPT, CONTINUATION, edits, FEATURES)))
    prompt = list(front.tokenizer(PROMPT).input_ids)
    continuation = list(front.tokenizer(CONTINUATION, add_special_tokens=False).input_ids)
    assert got.prompt_tokens == len(prompt) and prompt[0] == front.tokenizer.bos_token_id
    assert [t.token_id for t in got.tokens] == continuation
    assert [t.text for t in got.tokens] == [front.tokenizer.decode([t]) for t in continuation]
    want_lp, want_f = _reference_score(front, prompt, continuation, edits)
    assert max(abs(t.logprob - w) for t, w in zip(got.tokens, want_lp, strict=True)) < 1e-3
    got_f = torch.tensor([t.activations for t in got.tokens])
    assert torch.allclose(got_f, torch.tensor(want_f), atol=1e-4, rtol=1e-4)
    assert got_f.abs().sum() > 0  # the features fire somewhere: the comparison means something
    assert got.mean_logprob == pytest.approx(sum(want_lp) / len(want_lp), abs=1e-3)
    assert got.mean_activations == pytest.approx(got_f.mean(dim=0).tolist())


def test_a_score_without_features_or_edits_still_scores(front: FrontEnd) -> None:
    got = _run(score(front, ScoreRequest(PROMPT, " the sea")))
    assert got.tokens and all(t.logprob <= 0 and t.activations == () for t in got.tokens)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (ScoreRequest(PROMPT, ""), "continuation"),
        (ScoreRequest("  ", "x"), "prompt"),
        (ScoreRequest(PROMPT, " sea" * 5000), "continuation"),
        (ScoreRequest(PROMPT, "x", features=(FeatureRef("early", 0),) * 65), "features"),
        (ScoreRequest(PROMPT, "x", features=(FeatureRef("nope", 0),)), "features[0].sae"),
        (
            ScoreRequest(PROMPT, "x", (FeatureEdit("early", 999, EditMode.SET, 1.0),)),
            "edits[0].feature",
        ),
        (
            ScoreRequest(PROMPT, "x", (FeatureEdit("mid", 1, EditMode.SET, 1.0, relative=True),)),
            "edits[0].relative",
        ),
    ],
    ids=[
        "empty",
        "empty-prompt",
        "too-long",
        "features",
        "unknown-sae",
        "feature-range",
        "relative",
    ],
)
def test_bad_scores_name_the_field(front: FrontEnd, request_: ScoreRequest, field: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        _run(score(front, request_))
    assert err.value.field == field, err.value


def test_a_relative_edit_scores_as_its_absolute_value(front: FrontEnd) -> None:
    relative = (FeatureEdit("early", 7, EditMode.SET, 1.5, relative=True),)
    absolute = (FeatureEdit("early", 7, EditMode.SET, 6.0),)
    a = _run(score(front, ScoreRequest(PROMPT, CONTINUATION, relative, FEATURES)))
    b = _run(score(front, ScoreRequest(PROMPT, CONTINUATION, absolute, FEATURES)))
    assert a == b


# ---- Sweep ----------------------------------------------------------------------------------

SEA = FeatureRef("early", 7)  # typical maximum 4.0 in the fixture's catalog
PROMPTS = ("The sea", "Once upon a time")


async def _generate(front: FrontEnd, request: TextRequest) -> tuple[list[int], str]:
    async with aclosing(front.generate(request)) as chunks:
        got: list[TextChunk] = [c async for c in chunks]
    return [i for c in got for i in c.token_ids], "".join(c.text for c in got)


def _recommended(points: Sequence[Any]) -> tuple[float, float] | None:
    """DESIGN's rule, written again: the smallest strength with at least half of the largest
    concept gain over strength 0, its log-probability within 1 nat of strength 0's."""
    base = next(p for p in points if p.strength == 0)
    best = max(p.concept - base.concept for p in points)
    if best <= 0:
        return None
    ok = [
        p
        for p in points
        if p.strength != 0
        and p.concept - base.concept >= GAIN_SHARE * best
        and p.logprob >= base.logprob - LOGPROB_DROP_NATS
    ]
    chosen = min(ok, key=lambda p: abs(p.strength), default=None)
    return None if chosen is None else (chosen.strength, chosen.value)


@pytest.mark.parametrize("mode", [EditMode.SET, EditMode.ADD])
def test_sweep_texts_are_single_greedy_runs_and_its_numbers_are_score_calls(
    front: FrontEnd, mode: EditMode
) -> None:
    request = SweepRequest(SEA, PROMPTS, mode, strengths=(0.5, 3.0), max_new_tokens=8)
    points = _run(sweep(front, request))
    assert [p.strength for p in points] == [0.0, 0.5, 3.0]  # the baseline first: not asked for
    assert [p.value for p in points] == [0.0, 2.0, 12.0]  # × the typical maximum 4
    assert all(p.recommendation is None for p in points[:-1])
    for point in points:
        edits = () if point.value == 0 else (FeatureEdit("early", 7, mode, point.value),)
        concept, logprob, repetition = [], [], []
        for prompt, text in zip(PROMPTS, point.texts, strict=True):
            sampling = SamplingParams(max_new_tokens=8)
            ids, want = _run(
                _generate(front, TextRequest(prompt=prompt, sampling=sampling, edits=edits))
            )
            assert text == want, (point.strength, prompt)
            ids = [i for i in ids if i not in front.engine.eos_ids]
            # The output's own tokens read unsteered, as Score reads a text (the toy tokenizer
            # does not always give a decoded text back as the same tokens).
            prompt_ids = front.tokenizer(prompt).input_ids
            lp, f = _reference_score(front, prompt_ids, ids, (), (SEA,))
            concept.append(sum(row[0] for row in f) / len(f))
            logprob.append(sum(lp) / len(lp))
            repetition.append(repeat_share(ids))
        assert point.concept == pytest.approx(sum(concept) / 2, abs=1e-4)
        assert point.logprob == pytest.approx(sum(logprob) / 2, abs=1e-3)
        assert point.repetition == pytest.approx(sum(repetition) / 2)
    assert points[1].texts != points[0].texts or points[2].texts != points[0].texts  # it steers
    recommendation = points[-1].recommendation
    assert recommendation is not None and recommendation.reason
    want = _recommended(points)
    assert (
        (recommendation.strength, recommendation.value) == want
        if want
        else not recommendation.found
    )


def test_a_maximal_sweep_counts_as_one_request_for_the_queue_limits(
    model_folders: dict[str, Path],
) -> None:
    """3 prompts × 4 strengths (0 added) = 12 generations and 12 readings, on a server that
    holds 3 requests in flight: the sweep is one of them."""
    limits = Limits(
        max_active_rows=2, max_queued_requests=1, max_sweep_prompts=3, max_sweep_strengths=3
    )
    with running_frontend(model_folders["gemma2"], SAES, EngineConfig(limits=limits)) as front:
        request = SweepRequest(
            FeatureRef("early", 2), ("a", "b", "c"), strengths=(1.0, 2.0, 4.0), max_new_tokens=4
        )
        points = _run(sweep(front, request))
        assert [len(p.texts) for p in points] == [3, 3, 3, 3]


def test_a_sweep_of_a_feature_without_typical_max_uses_activation_units(front: FrontEnd) -> None:
    request = SweepRequest(FeatureRef("mid", 1), ("Hi",), strengths=(0.0, 5.0), max_new_tokens=2)
    points = _run(sweep(front, request))
    assert [(p.strength, p.value) for p in points] == [(0.0, 0.0), (5.0, 5.0)]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (SweepRequest(SEA, PROMPTS, EditMode.ABLATE), "mode"),
        (SweepRequest(SEA, ()), "prompts"),
        (SweepRequest(SEA, ("x",) * 9), "prompts"),
        (SweepRequest(SEA, (" ",)), "prompts[0]"),
        (SweepRequest(SEA, PROMPTS, strengths=tuple(range(13))), "strengths"),
        (SweepRequest(SEA, PROMPTS, strengths=(1.0, 1.0)), "strengths[1]"),
        (SweepRequest(SEA, PROMPTS, strengths=(float("nan"),)), "strengths[0]"),
        (SweepRequest(SEA, PROMPTS, strengths=(1e9,)), "strengths"),
        (SweepRequest(FeatureRef("early", 999), PROMPTS), "feature.feature"),
        (SweepRequest(FeatureRef("nope", 1), PROMPTS), "feature.sae"),
        (SweepRequest(SEA, PROMPTS, max_new_tokens=5000), "max_new_tokens"),
        (SweepRequest(SEA, ("sea " * 5000,)), "prompts[0]"),
    ],
    ids=[
        "ablate", "no-prompts", "many-prompts", "blank-prompt", "many-strengths", "twice",
        "nan", "huge", "feature-range", "unknown-sae", "max-new-tokens", "long-prompt",
    ],
)  # fmt: skip
def test_bad_sweeps_name_the_field(front: FrontEnd, request_: SweepRequest, field: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        _run(sweep(front, request_))
    assert err.value.field == field, err.value
