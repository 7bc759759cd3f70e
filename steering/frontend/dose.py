"""Score and Sweep over the front end (DESIGN: Dose): how a text reads to the model, and how one
feature's edit behaves across strengths.

Score reads prompt + continuation as one prefill-only request that also asks the engine for
the continuation tokens' log-probabilities. Sweep sends every (prompt, strength) generation to
the engine at once (one batch, within the discovery rows' share), then scores every output
unsteered, again all at once. Each counts as one request against the queue limits.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from steering.discovery.dose import ScoredText, ScoredToken, SweepPoint, recommend, sweep_point
from steering.edits import RELATIVE_MODES, FeatureEdit
from steering.engine.stats import AdmittedRequest
from steering.errors import InvalidRequestError
from steering.frontend.detokenize import TextStream
from steering.frontend.frontend import FrontEnd
from steering.requests import (
    DEFAULT_SWEEP_STRENGTHS,
    FeatureRef,
    GenerationRequest,
    InspectSpec,
    SamplingParams,
    ScoreRequest,
    SweepRequest,
    TextRequest,
    validate_score,
    validate_sweep,
)

T = TypeVar("T")


async def score(front: FrontEnd, request: ScoreRequest) -> ScoredText:
    """Per continuation token, its log-probability and the named features' activations."""
    with front._call(), front._discovery_call():
        text = front._resolved(TextRequest(prompt=request.prompt, edits=request.edits))
        request = replace(request, edits=text.edits)
        validate_score(request, front.limits, front.engine.d_sae_of)
        front._check_chars(text, "prompt")
        front._check_chars(TextRequest(prompt=request.continuation), "continuation")
        prompt_ids = await front._tokenize(text)
        continuation = await _run(front, _continuation_ids, front, request.continuation)
        if not continuation:
            raise InvalidRequestError("continuation", "the continuation has no tokens")
        total = len(prompt_ids) + len(continuation)
        if total > front.limits.max_prompt_tokens:
            raise InvalidRequestError(
                "continuation",
                f"prompt and continuation have {total} tokens, more than the limit of "
                f"{front.limits.max_prompt_tokens} (max_prompt_tokens)",
            )
        return await _read(
            front, prompt_ids, continuation, request.edits, request.features, request.request_id
        )


async def sweep(front: FrontEnd, request: SweepRequest) -> tuple[SweepPoint, ...]:
    """One point per strength (strength 0 first when the request lacks it), the last one with
    the recommendation."""
    with front._call(), front._discovery_call():
        validate_sweep(request, front.limits, front.engine.d_sae_of)
        strengths = request.strengths or DEFAULT_SWEEP_STRENGTHS
        field = "strengths" if request.strengths else "feature"
        if 0.0 not in strengths:
            strengths = (0.0, *strengths)  # the baseline the recommendation compares against
        values = [_value(front, request, s, field) for s in strengths]
        new_tokens = request.max_new_tokens or front.limits.default_max_new_tokens
        prompts = [
            await _sweep_prompt(front, p, i, new_tokens) for i, p in enumerate(request.prompts)
        ]
        sampling = SamplingParams(max_new_tokens=new_tokens)
        pairs = [(p, v) for v in values for p in prompts]
        outputs = await _all(
            [_greedy(front, p, _edits(request, v), sampling, request.request_id) for p, v in pairs]
        )
        eos = front.engine.eos_ids
        kept = [_strip(out, eos) for out in outputs]
        scores = await _all(
            [
                _read(front, p, out, (), (request.feature,), request.request_id, texts=False)
                for (p, _), out in zip(pairs, kept, strict=True)
                if out
            ]
        )
        texts = await _run(front, _texts, front, outputs)
        per_pair = iter(scores)
        all_scores = [next(per_pair) if out else None for out in kept]
        n = len(prompts)
        points = [
            sweep_point(
                strength,
                value,
                texts[k * n : (k + 1) * n],
                kept[k * n : (k + 1) * n],
                all_scores[k * n : (k + 1) * n],
            )
            for k, (strength, value) in enumerate(zip(strengths, values, strict=True))
        ]
        points[-1] = replace(points[-1], recommendation=recommend(points))
        return tuple(points)


def _value(front: FrontEnd, request: SweepRequest, strength: float, field: str) -> float:
    """A strength's edit value: × the feature's typical maximum where it has one (SET, ADD),
    the strength itself otherwise; within the limit on edit values."""
    ref = request.feature
    top = front.catalog.typical_max(ref.sae, ref.feature) if request.mode in RELATIVE_MODES else 0
    value = strength * top if top > 0 and math.isfinite(top) else strength
    most = front.limits.max_abs_edit_value
    if not abs(value) <= most:
        raise InvalidRequestError(
            field,
            f"strength {strength:g} is the edit value {value:g}, beyond the limit of {most:g} "
            "(max_abs_edit_value)",
        )
    return value


def _edits(request: SweepRequest, value: float) -> tuple[FeatureEdit, ...]:
    """The one edit of a strength; none for the baseline (strength 0 is unsteered)."""
    if value == 0:
        return ()
    ref = request.feature
    return (FeatureEdit(ref.sae, ref.feature, request.mode, value, request.only_when_active),)


async def _sweep_prompt(front: FrontEnd, prompt: str, i: int, new_tokens: int) -> tuple[int, ...]:
    """A prompt's ids; it and all it may generate must fit a scored text (max_prompt_tokens)."""
    text = TextRequest(prompt=prompt)
    front._check_chars(text, f"prompts[{i}]")
    ids = await front._tokenize(text)
    front._check_text_ids(ids, f"prompts[{i}]")
    most = front.limits.max_prompt_tokens
    if len(ids) + new_tokens > most:
        raise InvalidRequestError(
            f"prompts[{i}]",
            f"the prompt has {len(ids)} tokens: with max_new_tokens {new_tokens} the scored text "
            f"could pass the limit of {most} (max_prompt_tokens)",
        )
    return ids


async def _greedy(
    front: FrontEnd,
    ids: tuple[int, ...],
    edits: tuple[FeatureEdit, ...],
    sampling: SamplingParams,
    request_id: str,
) -> list[int]:
    """One greedy generation of a Sweep: its token ids (an end-of-sequence token included)."""
    request = GenerationRequest(ids, sampling, edits, request_id)
    admitted = AdmittedRequest(request_id, len(ids), edits, kind="sweep")
    tokens: list[int] = []
    async for _, out in front._outputs(request, admitted, reserved=True):
        tokens += out.token_ids
    return tokens


async def _read(
    front: FrontEnd,
    prompt: Sequence[int],
    continuation: Sequence[int],
    edits: tuple[FeatureEdit, ...],
    features: tuple[FeatureRef, ...],
    request_id: str,
    *,
    texts: bool = True,
) -> ScoredText:
    """Read prompt + continuation as one prefill; the continuation's tokens scored."""
    ids = (*prompt, *continuation)
    spec = InspectSpec(features=features, score_from=len(prompt))
    text = TextRequest(prompt="", edits=edits, request_id=request_id)
    readings = await front._prefill(ids, text, spec, "score")
    logprobs = readings.logprobs if readings else ()
    named = readings.named if readings and readings.named else ()
    decoded = await _run(front, front._token_texts, continuation) if texts else None
    tokens = tuple(
        ScoredToken(
            token_id=token,
            text=decoded[k] if decoded else "",
            logprob=logprobs[k],
            activations=named[len(prompt) + k] if named else (0.0,) * len(features),
        )
        for k, token in enumerate(continuation)
    )
    return ScoredText(tokens, len(prompt))


def _continuation_ids(front: FrontEnd, text: str) -> tuple[int, ...]:
    """The continuation's own tokens: no BOS, no special tokens added."""
    return tuple(front.tokenizer(text, add_special_tokens=False).input_ids)


def _texts(front: FrontEnd, outputs: Sequence[Sequence[int]]) -> list[str]:
    """Each output's text as Generate streams it (special tokens skipped)."""
    texts = []
    for ids in outputs:
        stream = TextStream(front.tokenizer)
        texts.append(stream.push(ids) + stream.flush())
    return texts


def _strip(tokens: Sequence[int], eos: frozenset[int]) -> tuple[int, ...]:
    """An output without its end-of-sequence token: the tokens its text holds."""
    end = len(tokens)
    while end and tokens[end - 1] in eos:
        end -= 1
    return tuple(tokens[:end])


async def _run(front: FrontEnd, function: Callable[..., T], *args: Any) -> T:
    """Call `function(*args)` on the front end's tokenizer thread."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(front._tokenizer_thread, function, *args)


async def _all(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Await every call at once; if one fails, the others are cancelled (their rows aborted)."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
