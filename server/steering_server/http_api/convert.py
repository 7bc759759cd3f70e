"""HTTP bodies <-> domain requests and answers, and the one map of the core's field names (the
proto's: `sampling.max_new_tokens`, `chat.messages[1].role`) to paths in an OpenAI body.

Checks only what the body's shape says and the core cannot: parameters OpenAI defines that this
server does not serve (refused by name rather than ignored), and the input's form.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from steering.discovery.cards import FeatureCard
from steering.discovery.catalog import FeatureMatch
from steering.discovery.dose import ScoredText, SweepPoint
from steering.discovery.results import FeatureActivation, FeatureContrast, InspectedToken
from steering.edits import EditMode, FeatureEdit
from steering.errors import InvalidRequestError
from steering.frontend import ServedModel, TokenLogprobs
from steering.requests import (
    ChatMessage,
    ContrastRequest,
    FeatureRef,
    InspectRequest,
    Limits,
    Receipt,
    Rule,
    SamplingParams,
    ScoreRequest,
    SweepRequest,
    TextRequest,
)
from steering_server.http_api import schemas as s

OPENAI_TEMPERATURE = 1.0  # what OpenAI samples with when a request names no temperature

# The core's field names -> the OpenAI body's, by prefix (longest first): the only place that
# knows both. A name not listed is the same in both (`prompt`, `preset` inside `steering`...).
OPENAI_FIELDS = (
    ("sampling.max_new_tokens", "max_tokens"),
    ("sampling.", ""),
    ("chat.messages", "messages"),
    ("chat", "messages"),
    ("rules[", "steering.rules["),
    ("edits", "steering.edits"),
    ("watch", "steering.watch"),
    ("preset", "steering.preset"),
)
_RULE_EDITS = re.compile(r"^(steering\.rules\[\d+\])\.apply\.edits")


def openai_param(field: str, *, chat: bool) -> str:
    """Where the core's `field` sits in an OpenAI body (`edits[0].feature` ->
    `steering.edits[0].feature`; a rule's `apply.edits[j]` is its `apply[j]`)."""
    if field == "input":
        return "messages" if chat else "prompt"
    if field == "sampling.top_logprobs" and not chat:
        return "logprobs"  # the legacy completions' count of most likely tokens
    for core, body in OPENAI_FIELDS:
        if field.startswith(core):
            field = body + field[len(core) :]
            break
    return _RULE_EDITS.sub(r"\1.apply", field)


def body_param(loc: Sequence[int | str]) -> str | None:
    """A pydantic error location (`("body", "steering", "edits", 0, "feature")`) as a body path
    (`steering.edits[0].feature`); a path or query parameter by its name; None for the body as
    a whole."""
    path = ""
    for part in loc[1:] if loc and loc[0] in ("body", "path", "query") else loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.replace("_", "").isalnum():  # not a union member's tag like `function-after`
            path += f".{part}" if path else part
    return path or None


# ---- requests -----------------------------------------------------------------------------

# Parameters OpenAI defines that would change the output and are not served: refused by name.
# Each check says whether the body asks for something other than the default.
UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "n": lambda v: v not in (None, 1),
    "echo": lambda v: bool(v),
    "best_of": lambda v: v not in (None, 1),
    "suffix": lambda v: v not in (None, ""),
    "tools": lambda v: bool(v),
    "tool_choice": lambda v: v not in (None, "none", "auto"),
    "functions": lambda v: bool(v),
    "response_format": lambda v: v not in (None, {"type": "text"}),
    "logit_bias": lambda v: bool(v),
    "presence_penalty": lambda v: v not in (None, 0, 0.0),
    "frequency_penalty": lambda v: v not in (None, 0, 0.0),
    "repetition_penalty": lambda v: v not in (None, 1, 1.0),
    "min_p": lambda v: v not in (None, 0, 0.0),
    "min_tokens": lambda v: v not in (None, 0),
}


def unsupported(body: s.Sampling) -> None:
    """Refuse a parameter that would change the output and is not served, naming it."""
    values = body.model_dump(exclude_unset=True)
    for name, asks in UNSUPPORTED.items():
        if name in values and asks(values[name]):
            raise InvalidRequestError(name, "is not supported by this server")


def completion_request(body: s.CompletionRequest, request_id: str) -> TextRequest:
    unsupported(body)
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise InvalidRequestError("prompt", "send one prompt (a string, or a list of one)")
        prompt = prompt[0]
    return _text_request(body, request_id, prompt=prompt)


def chat_request(body: s.ChatRequest, request_id: str) -> TextRequest:
    unsupported(body)
    messages = tuple(_message(i, m) for i, m in enumerate(body.messages))
    return _text_request(body, request_id, chat=messages, max_tokens=body.max_completion_tokens)


def _message(i: int, message: s.Message) -> ChatMessage:
    content = message.content
    if isinstance(content, list):
        for j, part in enumerate(content):
            if part.type != "text":
                raise InvalidRequestError(
                    f"messages[{i}].content[{j}].type",
                    f"only text parts are served, got {part.type!r}",
                )
        content = "\n".join(part.text for part in content)
    return ChatMessage(message.role, content or "")


def _text_request(
    body: s.Sampling,
    request_id: str,
    *,
    prompt: str | None = None,
    chat: tuple[ChatMessage, ...] | None = None,
    max_tokens: int | None = None,
) -> TextRequest:
    steering = body.steering or s.SteeringBody()
    stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
    given_max = max_tokens if max_tokens is not None else body.max_tokens
    sampling = SamplingParams(
        max_new_tokens=given_max or 0,
        temperature=OPENAI_TEMPERATURE if body.temperature is None else body.temperature,
        top_k=body.top_k or 0,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        ignore_eos=body.ignore_eos,
        stop=tuple(stop),
        top_logprobs=top_logprobs(body, chat=chat is not None),
    )
    return TextRequest(
        prompt=prompt,
        chat=chat,
        sampling=sampling,
        edits=edits(steering.edits),
        request_id=request_id,
        watch=refs(steering.watch),
        rules=tuple(_rule(r) for r in steering.rules),
        preset=steering.preset,
    )


def top_logprobs(body: s.Sampling, *, chat: bool) -> int | None:
    """OpenAI's log-probability fields as SamplingParams.top_logprobs (None: not asked; the
    range is the core's to check): chat's `logprobs: true` with `top_logprobs`, the legacy
    completions' `logprobs: N`."""
    asked, top = body.logprobs, body.top_logprobs
    if chat:
        if asked is not None and not isinstance(asked, bool):
            raise InvalidRequestError("logprobs", "must be true or false")
        if not asked:
            if top:
                raise InvalidRequestError("top_logprobs", "needs logprobs: true")
            return None
        return top or 0
    if top is not None:
        raise InvalidRequestError("top_logprobs", "is chat's: completions take logprobs: N")
    if asked is None:
        return None
    if isinstance(asked, bool) or not isinstance(asked, int):
        raise InvalidRequestError("logprobs", "must be an integer (most likely tokens per token)")
    return asked


def _rule(rule: s.RuleBody) -> Rule:
    return Rule(_ref(rule.when), rule.above, apply=edits(rule.apply), stop=rule.stop)


def edits(bodies: Sequence[s.EditBody]) -> tuple[FeatureEdit, ...]:
    return tuple(
        FeatureEdit(e.sae, e.feature, EditMode(e.mode), e.value, e.only_when_active, e.relative)
        for e in bodies
    )


def _ref(ref: s.RefBody) -> FeatureRef:
    return FeatureRef(ref.sae, ref.feature)


def refs(bodies: Sequence[s.RefBody]) -> tuple[FeatureRef, ...]:
    return tuple(_ref(r) for r in bodies)


def inspect_request(body: s.InspectBody, request_id: str) -> InspectRequest:
    chat = None
    if body.chat is not None:
        chat = tuple(_message(i, m) for i, m in enumerate(body.chat.messages))
    text = TextRequest(
        prompt=body.prompt, chat=chat, edits=edits(body.edits), request_id=request_id
    )
    return InspectRequest(text, tuple(body.saes), body.top_k, refs(body.features), body.no_top)


def score_request(body: s.ScoreBody, request_id: str) -> ScoreRequest:
    return ScoreRequest(
        body.prompt, body.continuation, edits(body.edits), refs(body.features), request_id
    )


def sweep_request(body: s.SweepBody, request_id: str) -> SweepRequest:
    return SweepRequest(
        _ref(body.feature),
        tuple(body.prompts),
        EditMode(body.mode),
        tuple(body.strengths),
        body.max_new_tokens,
        body.only_when_active,
        request_id,
    )


def contrast_request(body: s.ContrastBody) -> ContrastRequest:
    return ContrastRequest(tuple(body.a), tuple(body.b), body.sae, body.top_k)


# ---- answers ------------------------------------------------------------------------------


def edit_text(edit: FeatureEdit) -> str:
    """An edit in the CLI's syntax, its value as short as reads back exactly."""
    value = ""
    if edit.mode is not EditMode.ABLATE:
        short = f"{edit.value:g}"
        value = ":" + (short if float(short) == edit.value else repr(edit.value))
    if value and edit.relative:
        value += "x"
    active = "@active" if edit.only_when_active else ""
    return f"{edit.sae}:{edit.feature}={edit.mode.value}{value}{active}"


def receipts(given: Sequence[Receipt]) -> list[s.ReceiptBody]:
    return [
        s.ReceiptBody(
            edit=edit_text(r.edit), applied_positions=r.applied, active_positions=r.active
        )
        for r in given
    ]


def chat_logprobs(tokens: Sequence[TokenLogprobs]) -> s.ChatLogprobs:
    """Generated tokens' log-probabilities in OpenAI's chat shape."""
    return s.ChatLogprobs(
        content=[
            s.TokenLogprobBody(
                token=t.text,
                logprob=t.logprob,
                bytes=list(t.text.encode()),
                top_logprobs=[
                    s.TopLogprobBody(token=e.text, logprob=e.logprob, bytes=list(e.text.encode()))
                    for e in t.top
                ],
            )
            for t in tokens
        ]
    )


def completion_logprobs(tokens: Sequence[TokenLogprobs], offset: int) -> s.CompletionLogprobs:
    """Generated tokens' log-probabilities in OpenAI's legacy completions shape; `offset`: where
    the first token's text starts in the completion (tokens' texts are decoded alone)."""
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.text)
    top = []
    for t in tokens:
        most: dict[str, float] = {}
        for e in t.top:  # most likely first; the likelier keeps a text two tokens share
            most.setdefault(e.text, e.logprob)
        most.setdefault(t.text, t.logprob)  # the chosen token always, as OpenAI sends it
        top.append(most)
    return s.CompletionLogprobs(
        tokens=[t.text for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=top,
        text_offset=offsets,
    )


def edit_body(edit: FeatureEdit) -> s.EditBody:
    return s.EditBody(
        sae=edit.sae,
        feature=edit.feature,
        mode=edit.mode.value,
        value=edit.value,
        only_when_active=edit.only_when_active,
        relative=edit.relative,
    )


def _activation(a: FeatureActivation) -> s.FeatureActivationBody:
    return s.FeatureActivationBody(**asdict(a))  # the body's fields are the domain's


def inspect_answer(tokens: Sequence[InspectedToken]) -> s.InspectAnswer:
    return s.InspectAnswer(
        tokens=[
            s.InspectedTokenBody(
                token_id=t.token_id,
                text=t.text,
                special=t.special,
                top=[_activation(a) for a in t.top],
                features=[_activation(a) for a in t.features],
            )
            for t in tokens
        ]
    )


def contrast_answer(
    toward_a: Sequence[FeatureContrast], toward_b: Sequence[FeatureContrast]
) -> s.ContrastAnswer:
    return s.ContrastAnswer(
        toward_a=[s.FeatureContrastBody(**asdict(c)) for c in toward_a],
        toward_b=[s.FeatureContrastBody(**asdict(c)) for c in toward_b],
    )


def feature_card_answer(card: FeatureCard) -> s.FeatureCardBody:
    return s.FeatureCardBody(**asdict(card))  # the body's fields are the domain's


def search_answer(matches: Sequence[FeatureMatch]) -> s.SearchAnswer:
    return s.SearchAnswer(matches=[s.FeatureMatchBody(**asdict(m)) for m in matches])


def limits_body(limits: Limits, kv_cache_bytes: int) -> dict[str, float]:
    values: dict[str, Any] = {name: getattr(limits, name) for name in limits.__dataclass_fields__}
    return values | {"kv_cache_bytes": kv_cache_bytes}


def describe_answer(served: ServedModel) -> s.DescribeAnswer:
    return s.DescribeAnswer(
        model=s.ModelInfoBody(
            name=served.name,
            num_layers=served.num_layers,
            d_model=served.d_model,
            vocab_size=served.vocab_size,
            context_length=served.context_length,
            chat=served.chat,
            cuda_graphs=served.cuda_graphs,
            dtype=served.dtype,
            batch_invariance=served.batch_invariance,
        ),
        saes=[
            s.SaeInfoBody(
                name=a.name,
                layer=a.layer,
                d_sae=a.sae.d_sae,
                d_model=a.sae.d_model,
                site=a.site,
                labels=served.labels.get(a.name, 0),
                kind=a.sae.kind,
                sha256=a.sha256,
            )
            for a in served.saes
        ],
        limits=limits_body(served.limits, served.kv_cache_bytes),
        presets=[
            s.PresetBody(
                name=p.name, description=p.description, edits=[edit_body(e) for e in p.edits]
            )
            for p in served.presets
        ],
    )


def score_answer(scored: ScoredText) -> s.ScoreAnswer:
    return s.ScoreAnswer(
        tokens=[s.ScoredTokenBody(**asdict(t)) for t in scored.tokens],
        mean_logprob=scored.mean_logprob,
        mean_activations=list(scored.mean_activations),
        prompt_tokens=scored.prompt_tokens,
    )


def sweep_answer(points: Sequence[SweepPoint]) -> s.SweepAnswer:
    """The points in order; the recommendation (the last point's) beside them."""
    recommendation = points[-1].recommendation
    assert recommendation is not None
    return s.SweepAnswer(
        points=[
            s.SweepPointBody(**{k: v for k, v in asdict(p).items() if k != "recommendation"})
            for p in points
        ],
        recommendation=s.SweepRecommendationBody(**asdict(recommendation)),
    )
