"""Rules against an independent step-by-step reference: every step re-runs the whole sequence
without a cache, hooks written the long way apply the request's edits everywhere and a fired
rule's edits from its start position on, and conditions are checked at the new positions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import aclosing
from pathlib import Path

import pytest
import torch

from steering import EditMode, FeatureEdit
from steering.errors import InvalidRequestError
from steering.frontend import FrontEnd, TextChunk
from steering.requests import FeatureRef, FinishReason, Rule, SamplingParams, TextRequest
from tests.frontends import running_frontend
from tests.reference import reference_forward

SAES = (("early", 1, 128, 1), ("late", 2, 96, 2))
PROMPT = "Tell me about the sea and the boats"
N = 8
EDITS = (FeatureEdit("early", 5, EditMode.SET, 6.0),)


@pytest.fixture(scope="module", params=["gemma2", "gemma3"])
def front(request: pytest.FixtureRequest, model_folders: dict[str, Path]) -> Iterator[FrontEnd]:
    with running_frontend(model_folders[request.param], SAES) as frontend:
        yield frontend


def _forward(
    front: FrontEnd, ids: Sequence[int], edits: Sequence[tuple[FeatureEdit, int]]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One forward without cache, each edit from its start position on (see reference)."""
    engine = front.engine
    return reference_forward(engine.model, engine.hooks.attachments, front.special_ids, ids, edits)


def _reference(
    front: FrontEnd, ids: Sequence[int], edits: Sequence[FeatureEdit], rules: Sequence[Rule]
) -> tuple[list[int], str, dict[int, int]]:
    """Greedy tokens, how it ended ("length" or "condition"), and where each rule fired."""
    fired: dict[int, int] = {}
    sequence, prompt = list(ids), len(ids)
    for step in range(N):
        active = [(e, 0) for e in edits] + [
            (e, max(p + 1, prompt)) for i, p in fired.items() for e in rules[i].apply
        ]
        seen, logits = _forward(front, sequence, active)
        new = range(prompt) if step == 0 else [len(sequence) - 1]
        stop = False
        for i, rule in enumerate(rules):
            f = seen[rule.when.sae][:, rule.when.feature]
            hits = [q for q in new if i not in fired and f[q] > rule.above]
            if hits:
                fired[i] = hits[0]
                stop |= rule.stop
        if stop:
            return sequence[prompt:], "condition", fired
        sequence.append(int(logits.argmax()))
    return sequence[prompt:], "length", fired


def _generate(front: FrontEnd, request: TextRequest) -> list[TextChunk]:
    async def run() -> list[TextChunk]:
        async with aclosing(front.generate(request)) as chunks:
            return [c async for c in chunks]

    return asyncio.run(run())


def _request(rules: tuple[Rule, ...], edits: tuple[FeatureEdit, ...] = EDITS) -> TextRequest:
    sampling = SamplingParams(max_new_tokens=N, ignore_eos=True)
    return TextRequest(prompt=PROMPT, sampling=sampling, edits=edits, rules=rules)


def _threshold(front: FrontEnd, sae: str) -> tuple[int, float, float]:
    """A feature of `sae` that is higher in the generation than anywhere in the prompt: (index,
    the prompt's max, the generation's max), from the reference without rules."""
    ids = front.tokenize(_request(()))
    tokens, _, _ = _reference(front, ids, EDITS, ())
    seen, _ = _forward(front, list(ids) + tokens[:-1], [(e, 0) for e in EDITS])
    f = seen[sae]
    prompt_max, gen_max = f[: len(ids)].max(0).values, f[len(ids) :].max(0).values
    margin = gen_max - prompt_max
    i = int(margin.argmax())
    assert margin[i] > 0.05, "no feature rises after the prompt"
    return i, float(prompt_max[i]), float(gen_max[i])


def _check(front: FrontEnd, rules: tuple[Rule, ...]) -> tuple[list[TextChunk], dict[int, int]]:
    request = _request(rules)
    chunks = _generate(front, request)
    ids = front.tokenize(request)
    tokens, ended, fired = _reference(front, ids, EDITS, rules)
    assert [t for c in chunks for t in c.token_ids] == tokens
    reason = FinishReason.CONDITION if ended == "condition" else FinishReason.LENGTH
    assert chunks[-1].finish_reason is reason
    assert chunks[-1].completion_tokens == len(tokens)
    receipts = [r.edit for r in chunks[-1].receipts]
    expected = list(EDITS) + [e for i in sorted(fired) for e in rules[i].apply]
    assert sorted(receipts, key=repr) == sorted(expected, key=repr)  # fired rules' edits only
    return chunks, fired


def test_a_rule_firing_in_the_prompt_applies_from_the_first_generated_token(
    front: FrontEnd,
) -> None:
    ids = front.tokenize(_request(()))
    seen, _ = _forward(front, ids, [(e, 0) for e in EDITS])
    feature = int(seen["late"].max(0).values.argmax())
    rule = Rule(
        FeatureRef("late", feature), 0.0, apply=(FeatureEdit("late", 7, EditMode.SET, 25.0),)
    )
    chunks, fired = _check(front, (rule,))
    assert fired and fired[0] < len(ids)
    plain = _generate(front, _request(()))
    assert [t for c in chunks for t in c.token_ids] != [t for c in plain for t in c.token_ids]


def test_a_rule_firing_mid_generation_and_one_never(front: FrontEnd) -> None:
    feature, low, high = _threshold(front, "early")
    later = Rule(
        FeatureRef("early", feature),
        (low + high) / 2,
        apply=(FeatureEdit("late", 3, EditMode.ADD, 30.0),),
    )
    never = Rule(FeatureRef("late", 0), 1e6, apply=(FeatureEdit("late", 9, EditMode.SET, 30.0),))
    _, fired = _check(front, (later, never))
    assert set(fired) == {0} and fired[0] >= len(front.tokenize(_request(())))


def test_a_stop_rule_ends_the_request_without_the_token_of_its_forward(front: FrontEnd) -> None:
    feature, low, high = _threshold(front, "early")
    stop = Rule(FeatureRef("early", feature), (low + high) / 2, stop=True)
    chunks, fired = _check(front, (stop,))
    assert chunks[-1].finish_reason is FinishReason.CONDITION and 0 in fired
    assert chunks[-1].completion_tokens < N


def test_a_stop_rule_firing_in_the_prompt_generates_nothing(front: FrontEnd) -> None:
    chunks, _ = _check(front, (Rule(FeatureRef("early", 5), -1.0, stop=True),))
    assert chunks[-1].completion_tokens == 0 and not chunks[-1].token_ids


def test_rows_with_different_rules_in_one_batch_equal_their_solo_runs(front: FrontEnd) -> None:
    feature, low, high = _threshold(front, "early")
    requests = [
        _request((Rule(FeatureRef("early", feature), (low + high) / 2, stop=True),)),
        _request(
            (Rule(FeatureRef("late", 1), 0.0, apply=(FeatureEdit("late", 7, EditMode.SET, 25.0),)),)
        ),
        _request((), edits=()),
        _request((Rule(FeatureRef("late", 2), 1e6, stop=True),)),
    ]
    solo = [_generate(front, r) for r in requests]

    async def together() -> list[list[TextChunk]]:
        async def one(r: TextRequest) -> list[TextChunk]:
            async with aclosing(front.generate(r)) as chunks:
                return [c async for c in chunks]

        return list(await asyncio.gather(*(one(r) for r in requests)))

    batched = asyncio.run(together())
    for alone, beside in zip(solo, batched, strict=True):
        assert [t for c in alone for t in c.token_ids] == [t for c in beside for t in c.token_ids]
        assert alone[-1].finish_reason is beside[-1].finish_reason
        assert alone[-1].receipts == beside[-1].receipts


@pytest.mark.parametrize(
    ("rules", "field"),
    [
        ((Rule(FeatureRef("nope", 1), 0.0, stop=True),), "rules[0].when.sae"),
        ((Rule(FeatureRef("late", 96), 0.0, stop=True),), "rules[0].when.feature"),
        ((Rule(FeatureRef("late", 1), float("nan"), stop=True),), "rules[0].above"),
        ((Rule(FeatureRef("late", 1), 0.0),), "rules[0]"),
        (
            (Rule(FeatureRef("late", 1), 0.0, apply=EDITS, stop=True),),
            "rules[0]",
        ),
        (
            (Rule(FeatureRef("late", 1), 0.0, apply=(FeatureEdit("early", 5, EditMode.ADD, 1),)),),
            "rules[0].apply.edits[0].feature",
        ),
        (
            (
                Rule(FeatureRef("late", 1), 0.0, apply=(FeatureEdit("late", 2, EditMode.ADD, 1),)),
                Rule(FeatureRef("late", 2), 0.0, apply=(FeatureEdit("late", 2, EditMode.SET, 1),)),
            ),
            "rules[1].apply.edits[0].feature",
        ),
        (
            (Rule(FeatureRef("late", 1), 0.0, apply=(FeatureEdit("x", 2, EditMode.ADD, 1),)),),
            "rules[0].apply.edits[0].sae",
        ),
        ((Rule(FeatureRef("late", 1), 0.0, stop=True),) * 17, "rules"),
    ],
)
def test_bad_rules_name_the_field(front: FrontEnd, rules: tuple[Rule, ...], field: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        _generate(front, _request(rules))
    assert err.value.field == field
