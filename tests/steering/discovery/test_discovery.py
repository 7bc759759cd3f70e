"""Inspect, watch, receipts and Contrast against a reference written the long way: a plain
forward without cache, edits applied by `reference_row`, and each SAE's features encoded by hand
from its input before its own edits (SAEs on one layer in order)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
import torch

from steering import EditMode, FeatureEdit
from steering.errors import InvalidRequestError
from steering.frontend import FrontEnd, TextChunk
from steering.models.gemma import special_token_ids
from steering.requests import (
    ContrastRequest,
    FeatureRef,
    InspectRequest,
    SamplingParams,
    TextRequest,
)
from steering.sae.jumprelu import JumpReLUSAE
from tests.frontends import running_frontend
from tests.reference import reference_forward

# Several SAEs on two layers; "mid" and "mid2" share layer 2 and apply in this order.
SAES = (("early", 1, 128, 1), ("mid", 2, 96, 2), ("mid2", 2, 64, 3))
EDITS = (
    FeatureEdit("early", 5, EditMode.SET, 6.0),
    FeatureEdit("early", 9, EditMode.SCALE, 3.0, only_when_active=True),
    FeatureEdit("mid", 3, EditMode.ADD, 4.0),
    FeatureEdit("mid2", 7, EditMode.ABLATE),
)
WATCH = (FeatureRef("mid", 3), FeatureRef("early", 9), FeatureRef("mid2", 7), FeatureRef("mid", 0))
PROMPT = "Tell me about the sea and the boats"


@pytest.fixture(scope="module", params=["gemma2", "gemma3"])
def front(request: pytest.FixtureRequest, model_folders: dict[str, Path]) -> Iterator[FrontEnd]:
    with running_frontend(model_folders[request.param], SAES) as frontend:
        yield frontend


def _reference(
    front: FrontEnd, ids: Sequence[int], edits: Sequence[FeatureEdit]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per SAE, f (T, d_sae) as it sees the output of its layer before its own edits; and the
    logits of the next token (V,)."""
    engine = front.engine
    return reference_forward(
        engine.model, engine.hooks.attachments, front.special_ids, ids, [(e, 0) for e in edits]
    )


def _reference_generate(
    front: FrontEnd, ids: Sequence[int], edits: Sequence[FeatureEdit], n: int
) -> tuple[list[int], dict[str, torch.Tensor]]:
    """n greedy tokens, and the readings over prompt + every generated token but the last."""
    sequence = list(ids)
    for _ in range(n):
        sequence.append(int(_reference(front, sequence, edits)[1].argmax()))
    return sequence[len(ids) :], _reference(front, sequence[:-1], edits)[0]


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def _chunks(front: FrontEnd, request: TextRequest) -> list[TextChunk]:
    async with aclosing(front.generate(request)) as chunks:
        return [c async for c in chunks]


@pytest.mark.parametrize("edits", [(), EDITS], ids=["unsteered", "steered"])
def test_inspect_equals_the_reference(front: FrontEnd, edits: tuple[FeatureEdit, ...]) -> None:
    features = (FeatureRef("mid2", 7), FeatureRef("early", 5), FeatureRef("mid", 3))
    text = TextRequest(prompt=PROMPT, edits=edits)
    tokens = _run(front.inspect(InspectRequest(text, top_k=5, features=features)))
    ids = front.tokenize(text)
    assert [t.token_id for t in tokens] == list(ids)
    seen, _ = _reference(front, ids, edits)
    for t, token in enumerate(tokens):
        assert token.special == (ids[t] in front.special_ids)
        assert token.text == front.tokenizer.decode([ids[t]])
        for ref, got in zip(features, token.features, strict=True):
            assert (got.sae, got.feature) == (ref.sae, ref.feature)
            assert got.activation == pytest.approx(float(seen[ref.sae][t, ref.feature]), abs=1e-4)
        assert [f.sae for f in token.top] == sorted(
            (f.sae for f in token.top), key=[name for name, *_ in SAES].index
        )  # grouped by SAE in serving order
        for name, *_ in SAES:
            expected = _top(seen[name][t], 5)
            got = [(f.feature, f.activation) for f in token.top if f.sae == name]
            assert [i for i, _ in got] == [i for i, _ in expected]
            assert [v for _, v in got] == pytest.approx([v for _, v in expected], abs=1e-4)
        if token.special:
            assert not token.top and all(f.activation == 0 for f in token.features)


def _top(f: torch.Tensor, k: int) -> list[tuple[int, float]]:
    active = [(float(v), i) for i, v in enumerate(f.tolist()) if v > 0]
    return [(i, v) for v, i in sorted(active, key=lambda p: (-p[0], p[1]))[:k]]


def test_a_no_top_inspect_reads_the_named_features_without_a_full_encode(
    front: FrontEnd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """no_top: no top lists, the same named values as a normal Inspect, and no SAE's full
    encode run for it (the named features are read from their encoder columns alone)."""
    features = (FeatureRef("mid2", 7), FeatureRef("early", 5), FeatureRef("mid", 3))
    text = TextRequest(prompt=PROMPT, edits=EDITS)
    normal = _run(front.inspect(InspectRequest(text, features=features)))
    encodes = 0
    encode = JumpReLUSAE.encode

    def counted(self: JumpReLUSAE, x: torch.Tensor) -> torch.Tensor:
        nonlocal encodes
        encodes += 1
        return encode(self, x)

    monkeypatch.setattr(JumpReLUSAE, "encode", counted)
    lean = _run(front.inspect(InspectRequest(text, features=features, no_top=True)))
    assert encodes == 0
    assert any(t.top for t in normal) and not any(t.top for t in lean)
    assert [t.token_id for t in lean] == [t.token_id for t in normal]
    assert [t.features for t in lean] == [t.features for t in normal]
    _run(front.inspect(InspectRequest(text, features=features)))
    assert encodes > 0  # the counter sees a normal Inspect's encodes


def test_edits_at_an_earlier_layer_change_what_later_saes_read(front: FrontEnd) -> None:
    """The test above discriminates: the steered readings differ from the unsteered ones."""
    features = (FeatureRef("mid2", 7), FeatureRef("mid", 3))
    plain = _run(front.inspect(InspectRequest(TextRequest(prompt=PROMPT), features=features)))
    steered = _run(
        front.inspect(InspectRequest(TextRequest(prompt=PROMPT, edits=EDITS), features=features))
    )
    assert [t.features for t in plain] != [t.features for t in steered]


def test_watch_and_receipts_equal_the_reference(front: FrontEnd) -> None:
    n = 6
    sampling = SamplingParams(max_new_tokens=n, ignore_eos=True)
    request = TextRequest(prompt=PROMPT, sampling=sampling, edits=EDITS, watch=WATCH)
    chunks = _run(_chunks(front, request))
    ids = front.tokenize(request)
    tokens, seen = _reference_generate(front, ids, EDITS, n)
    assert [t for c in chunks for t in c.token_ids] == tokens
    watched = [w for c in chunks for w in c.watched]
    assert len(watched) == n
    for k, values in enumerate(watched):
        position = len(ids) - 1 + k  # the forward that produced token k read this position
        expected = [float(seen[r.sae][position, r.feature]) for r in WATCH]
        assert list(values) == pytest.approx(expected, abs=1e-4)
    specials = torch.tensor(sorted(front.special_ids))
    steerable = ~torch.isin(torch.tensor(ids + tuple(tokens[:-1])), specials)
    receipts = chunks[-1].receipts
    assert [r.edit for r in receipts] == list(EDITS)
    for receipt in receipts:
        f = seen[receipt.edit.sae][:, receipt.edit.feature]
        active = int(((f > 0) & steerable).sum())
        applied = active if receipt.edit.only_when_active else int(steerable.sum())
        assert (receipt.applied, receipt.active) == (applied, active), receipt
    assert any(r.active for r in receipts) and any(r.applied != r.active for r in receipts)


def test_watching_never_steers(front: FrontEnd) -> None:
    sampling = SamplingParams(max_new_tokens=8, ignore_eos=True)
    plain = _run(_chunks(front, TextRequest(prompt=PROMPT, sampling=sampling)))
    watching = _run(_chunks(front, TextRequest(prompt=PROMPT, sampling=sampling, watch=WATCH)))
    # the tokens, however the stream grouped them into chunks (that depends on timing)
    assert _token_ids(plain) == _token_ids(watching)
    assert not any(c.watched for c in plain)


def test_contrast_equals_the_reference(front: FrontEnd) -> None:
    a = ("The sea was calm and blue.", "Waves broke on the rocks.")
    b = ("The city at night is loud.", "Music played on every street.", "Cars were loud.")
    toward_a, toward_b = _run(front.contrast(ContrastRequest(a, b, top_k=4)))

    def mean_of(texts: Sequence[str]) -> dict[str, torch.Tensor]:
        per_text = []
        for text in texts:
            ids = front.tokenize(TextRequest(prompt=text))
            steerable = sum(1 for t in ids if t not in front.special_ids)
            per_text.append(
                {k: v.sum(0) / steerable for k, v in _reference(front, ids, ())[0].items()}
            )
        return {name: torch.stack([m[name] for m in per_text]).mean(0) for name, *_ in SAES}

    mean_a, mean_b = mean_of(a), mean_of(b)
    scored = sorted(
        (float(mean_a[s][i] - mean_b[s][i]), s, i) for s in mean_a for i in range(len(mean_a[s]))
    )
    expected_a = [(s, i) for d, s, i in sorted(scored, key=lambda x: (-x[0], x[1], x[2])) if d > 0]
    expected_b = [(s, i) for d, s, i in sorted(scored, key=lambda x: (x[0], x[1], x[2])) if d < 0]
    assert [(c.sae, c.feature) for c in toward_a] == expected_a[:4]
    assert [(c.sae, c.feature) for c in toward_b] == expected_b[:4]
    for c in toward_a + toward_b:
        assert c.mean_a == pytest.approx(float(mean_a[c.sae][c.feature]), abs=1e-4)
        assert c.mean_b == pytest.approx(float(mean_b[c.sae][c.feature]), abs=1e-4)
    only_mid = _run(front.contrast(ContrastRequest(a, b, sae="mid", top_k=2)))
    assert {c.sae for side in only_mid for c in side} == {"mid"}


def test_a_canary_is_unchanged_while_inspect_and_contrast_run(front: FrontEnd) -> None:
    sampling = SamplingParams(max_new_tokens=12, ignore_eos=True)
    canary = TextRequest(prompt="Once upon a time", sampling=sampling, edits=EDITS[:1])
    solo = _run(_chunks(front, canary))

    async def together() -> list[TextChunk]:
        side = [
            front.inspect(InspectRequest(TextRequest(prompt=PROMPT, edits=EDITS), top_k=3)),
            front.contrast(ContrastRequest(("a sea",) * 3, ("a city",) * 3)),
        ]
        chunks, *_ = await asyncio.gather(_chunks(front, canary), *side)
        return chunks

    beside = _run(together())
    assert _token_ids(beside) == _token_ids(solo)
    _wait_idle(front)


def _token_ids(chunks: Sequence[TextChunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def _wait_idle(front: FrontEnd) -> None:
    """The idle invariant: nothing queued, running or held once every call has returned."""
    for _ in range(500):
        if front.engine.idle:
            return
        time.sleep(0.01)
    raise AssertionError("the engine did not become idle")


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda f: f.inspect(InspectRequest(TextRequest(prompt="x"), top_k=65)), "top_k"),
        (lambda f: f.inspect(InspectRequest(TextRequest(prompt="x"), saes=("no",))), "saes[0]"),
        (
            lambda f: f.inspect(
                InspectRequest(TextRequest(prompt="x"), features=(FeatureRef("mid", 96),))
            ),
            "features[0].feature",
        ),
        (
            lambda f: f.inspect(
                InspectRequest(TextRequest(prompt="x"), features=(FeatureRef("mid", 1),) * 65)
            ),
            "features",
        ),
        (lambda f: f.inspect(InspectRequest(TextRequest(prompt=" "))), "prompt"),
        (
            lambda f: f.inspect(InspectRequest(TextRequest(prompt="x"), top_k=3, no_top=True)),
            "top_k",
        ),
        (lambda f: f.contrast(ContrastRequest((), ("b",))), "a"),
        (lambda f: f.contrast(ContrastRequest(("a",), ("b",) * 257)), "b"),
        (lambda f: f.contrast(ContrastRequest(("a", " "), ("b",))), "a[1]"),
        (lambda f: f.contrast(ContrastRequest(("a",), ("b",), sae="no")), "sae"),
        (lambda f: f.contrast(ContrastRequest(("a",), ("b",), top_k=100)), "top_k"),
        (
            lambda f: _chunks(f, TextRequest(prompt="x", watch=(FeatureRef("no", 1),))),
            "watch[0].sae",
        ),
        (
            lambda f: _chunks(f, TextRequest(prompt="x", watch=(FeatureRef("mid", 1),) * 17)),
            "watch",
        ),
    ],
)
def test_bad_discovery_input_names_the_field(front: FrontEnd, call: Any, field: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        _run(call(front))
    assert err.value.field == field
    _wait_idle(front)


def test_a_contrast_text_of_special_tokens_only_is_refused(front: FrontEnd) -> None:
    bos = front.tokenizer.bos_token
    with pytest.raises(InvalidRequestError) as err:
        _run(front.contrast(ContrastRequest(("a sea",), (bos,))))
    assert err.value.field == "b[0]"
    assert set(special_token_ids(front.tokenizer)) >= {front.tokenizer.bos_token_id}


def test_five_contrasts_beside_thirty_generates_all_complete_within_the_queue_limits(
    model_folders: dict[str, Path],
) -> None:
    from steering.engine import EngineConfig
    from steering.requests import ContrastRequest, Limits, SamplingParams, TextRequest

    # 4 rows and 31 queued: 35 requests in flight, each Contrast one of them.
    config = EngineConfig(limits=Limits(max_active_rows=4, max_queued_requests=31))
    texts = tuple(f"The {word} was green and tall" for word in ("tree", "hill", "grass", "moss"))
    others = tuple(f"A {word} ran by the sea" for word in ("dog", "cat", "fox", "child"))
    with running_frontend(model_folders["gemma3"], (("s", 1, 64, 1),), config) as front:

        async def generate(i: int) -> int:
            request = TextRequest(
                prompt=f"Story {i}:", sampling=SamplingParams(max_new_tokens=4, ignore_eos=True)
            )
            async with aclosing(front.generate(request)) as chunks:
                return sum([len(c.token_ids) async for c in chunks])

        async def everything() -> list[object]:
            contrasts = [front.contrast(ContrastRequest(texts, others, top_k=3)) for _ in range(5)]
            generates = [generate(i) for i in range(30)]
            return list(await asyncio.gather(*contrasts, *generates))

        results = asyncio.run(everything())
    assert all(len(r[0]) == 3 and len(r[1]) == 3 for r in results[:5])  # type: ignore[index]
    assert results[5:] == [4] * 30
    assert front.engine.idle
