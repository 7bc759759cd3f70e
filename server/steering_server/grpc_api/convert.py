"""Proto <-> domain, in one place: requests in, chunks and descriptions out.

Checks only what the wire format says and the domain cannot (an unset oneof, an unset enum);
every other rule is the core's (`steering.requests`), applied by the front end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from steering.discovery.cards import FeatureCard
from steering.discovery.catalog import FeatureMatch
from steering.discovery.dose import ScoredText, SweepPoint
from steering.discovery.results import FeatureActivation, FeatureContrast, InspectedToken
from steering.edits import EditMode, FeatureEdit
from steering.errors import InvalidRequestError
from steering.frontend import ServedModel, TextChunk, TokenLogprobs
from steering.requests import (
    ChatMessage,
    ContrastRequest,
    FeatureCardRequest,
    FeatureRef,
    FinishReason,
    InspectRequest,
    Limits,
    Receipt,
    Rule,
    SamplingParams,
    ScoreRequest,
    SearchBy,
    SweepRequest,
    TextRequest,
)
from steering_proto.v1 import steering_pb2 as pb

MODE_OF = {
    pb.EDIT_MODE_SET: EditMode.SET,
    pb.EDIT_MODE_ADD: EditMode.ADD,
    pb.EDIT_MODE_SCALE: EditMode.SCALE,
    pb.EDIT_MODE_ABLATE: EditMode.ABLATE,
}
PB_MODE_OF = {mode: value for value, mode in MODE_OF.items()}
FINISH_OF = {
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.EOS: pb.FINISH_REASON_EOS,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.CONDITION: pb.FINISH_REASON_CONDITION,
}


def text_request(request: pb.GenerateRequest, request_id: str) -> TextRequest:
    """The call as a domain request; `request_id` is the caller's, or one the server assigned."""
    prompt, chat = _input(request)
    return TextRequest(
        prompt=prompt,
        chat=chat,
        sampling=_sampling(request.sampling),
        edits=_edits(request.edits),
        request_id=request_id,
        watch=_refs(request.watch),
        rules=tuple(_rule(i, r) for i, r in enumerate(request.rules)),
        preset=request.preset,
    )


def _rule(i: int, rule: pb.Rule) -> Rule:
    """A rule; a missing action or `stop: false` reaches the core's validation as no action."""
    when = FeatureRef(rule.when.sae, rule.when.feature)
    action = rule.WhichOneof("then")
    if action == "apply":
        edits = tuple(
            _edit(j, e, f"rules[{i}].apply.edits") for j, e in enumerate(rule.apply.edits)
        )
        return Rule(when, rule.above, apply=edits)
    return Rule(when, rule.above, stop=action == "stop" and rule.stop)


def inspect_request(request: pb.InspectRequest, request_id: str) -> InspectRequest:
    prompt, chat = _input(request)
    text = TextRequest(prompt=prompt, chat=chat, edits=_edits(request.edits), request_id=request_id)
    return InspectRequest(
        text, tuple(request.saes), request.top_k, _refs(request.features), request.no_top
    )


def contrast_request(request: pb.ContrastRequest) -> ContrastRequest:
    return ContrastRequest(tuple(request.a), tuple(request.b), request.sae, request.top_k)


def _input(
    request: pb.GenerateRequest | pb.InspectRequest,
) -> tuple[str | None, tuple[ChatMessage, ...] | None]:
    which = request.WhichOneof("input")
    if which is None:
        raise InvalidRequestError("input", "set either prompt or chat")
    if which == "prompt":
        return request.prompt, None
    return None, tuple(ChatMessage(m.role, m.content) for m in request.chat.messages)


def _refs(refs: Sequence[pb.FeatureRef]) -> tuple[FeatureRef, ...]:
    return tuple(FeatureRef(r.sae, r.feature) for r in refs)


def _edits(edits: Sequence[pb.FeatureEdit]) -> tuple[FeatureEdit, ...]:
    return tuple(_edit(i, e) for i, e in enumerate(edits))


def _sampling(s: pb.SamplingParams) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p,
        seed=s.seed if s.HasField("seed") else None,
        ignore_eos=s.ignore_eos,
        stop=tuple(s.stop),
        top_logprobs=s.top_logprobs if s.HasField("top_logprobs") else None,
    )


def _edit(i: int, edit: pb.FeatureEdit, field: str = "edits") -> FeatureEdit:
    if edit.mode not in MODE_OF:
        raise InvalidRequestError(f"{field}[{i}].mode", "set a mode: SET, ADD, SCALE or ABLATE")
    return FeatureEdit(
        edit.sae, edit.feature, MODE_OF[edit.mode], edit.value, edit.only_when_active, edit.relative
    )


def response(chunk: TextChunk) -> pb.GenerateResponse:
    """One chunk of the stream; the last one carries the finish reason, usage and seed."""
    message = pb.GenerateResponse(
        token_ids=chunk.token_ids,
        text=chunk.text,
        watched=[pb.WatchedToken(activations=values) for values in chunk.watched],
        logprobs=[_logprobs(t) for t in chunk.logprobs],
    )
    if chunk.finish_reason is not None:
        message.finish_reason = FINISH_OF[chunk.finish_reason]
        message.usage.CopyFrom(
            pb.Usage(prompt_tokens=chunk.prompt_tokens, completion_tokens=chunk.completion_tokens)
        )
        message.seed = chunk.seed
        message.receipts.extend(_receipt(r) for r in chunk.receipts)
    return message


def _logprobs(token: TokenLogprobs) -> pb.TokenLogprobs:
    return pb.TokenLogprobs(
        logprob=token.logprob,
        top=[pb.TopLogprob(token_id=t.token_id, text=t.text, logprob=t.logprob) for t in token.top],
    )


def _receipt(receipt: Receipt) -> pb.EditReceipt:
    return pb.EditReceipt(
        edit=edit_message(receipt.edit),
        applied_positions=receipt.applied,
        active_positions=receipt.active,
    )


def edit_message(edit: FeatureEdit) -> pb.FeatureEdit:
    return pb.FeatureEdit(
        sae=edit.sae,
        feature=edit.feature,
        mode=PB_MODE_OF[edit.mode],
        value=edit.value,
        only_when_active=edit.only_when_active,
        relative=edit.relative,
    )


def inspect_response(tokens: Sequence[InspectedToken]) -> pb.InspectResponse:
    return pb.InspectResponse(
        tokens=[
            pb.InspectedToken(
                token_id=t.token_id,
                text=t.text,
                special=t.special,
                top=[_activation(a) for a in t.top],
                features=[_activation(a) for a in t.features],
            )
            for t in tokens
        ]
    )


def _activation(a: FeatureActivation) -> pb.FeatureActivation:
    return pb.FeatureActivation(**asdict(a))  # the proto's fields are the domain's


def contrast_response(
    toward_a: Sequence[FeatureContrast], toward_b: Sequence[FeatureContrast]
) -> pb.ContrastResponse:
    return pb.ContrastResponse(
        toward_a=[pb.FeatureContrast(**asdict(c)) for c in toward_a],
        toward_b=[pb.FeatureContrast(**asdict(c)) for c in toward_b],
    )


SEARCH_BY = {
    pb.SEARCH_BY_UNSPECIFIED: SearchBy.LABELS,
    pb.SEARCH_BY_LABELS: SearchBy.LABELS,
    pb.SEARCH_BY_ACTIVATION: SearchBy.ACTIVATION,
    pb.SEARCH_BY_BOTH: SearchBy.BOTH,
}


def search_by(request: pb.SearchFeaturesRequest) -> SearchBy:
    """What a search reads; an enum value this server does not know is INVALID_ARGUMENT."""
    by = SEARCH_BY.get(request.by)
    if by is None:
        raise InvalidRequestError("by", f"unknown SearchBy value {request.by}")
    return by


def search_response(matches: Sequence[FeatureMatch]) -> pb.SearchFeaturesResponse:
    return pb.SearchFeaturesResponse(matches=[pb.FeatureMatch(**asdict(m)) for m in matches])


def limits_message(limits: Limits, kv_cache_bytes: int = 0) -> pb.Limits:
    return pb.Limits(
        max_edits_per_sae=limits.max_edits_per_sae,
        kv_cache_bytes=kv_cache_bytes,
        max_prompt_tokens=limits.max_prompt_tokens,
        max_new_tokens=limits.max_new_tokens,
        default_max_new_tokens=limits.default_max_new_tokens,
        max_edits_per_request=limits.max_edits_per_request,
        max_abs_edit_value=limits.max_abs_edit_value,
        max_batch_size=limits.max_active_rows,  # the deprecated name, for older clients
        max_active_rows=limits.max_active_rows,
        max_queued_requests=limits.max_queued_requests,
        max_stop_strings=limits.max_stop_strings,
        max_stop_string_chars=limits.max_stop_string_chars,
        max_top_k=limits.max_top_k,
        max_inspect_features=limits.max_inspect_features,
        max_watched_features=limits.max_watched_features,
        max_contrast_texts=limits.max_contrast_texts,
        max_search_results=limits.max_search_results,
        max_rules_per_request=limits.max_rules_per_request,
        max_top_logprobs=limits.max_top_logprobs,
        max_sweep_prompts=limits.max_sweep_prompts,
        max_sweep_strengths=limits.max_sweep_strengths,
    )


def description(served: ServedModel) -> pb.DescribeModelResponse:
    return pb.DescribeModelResponse(
        model=pb.ModelInfo(
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
            pb.SaeInfo(
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
        limits=limits_message(served.limits, served.kv_cache_bytes),
        presets=[
            pb.Preset(
                name=p.name,
                description=p.description,
                edits=[edit_message(e) for e in p.edits],
            )
            for p in served.presets
        ],
    )


def feature_card_request(request: pb.DescribeFeatureRequest) -> FeatureCardRequest:
    return FeatureCardRequest(request.sae, request.feature, request.top_tokens)


def feature_card(card: FeatureCard) -> pb.FeatureCard:
    return pb.FeatureCard(
        sae=card.sae,
        feature=card.feature,
        label=card.label,
        typical_max=card.typical_max,
        frequency=card.frequency,
        top_contexts=card.top_contexts,
        promoted=[pb.TokenWeight(**asdict(t)) for t in card.promoted],
        suppressed=[pb.TokenWeight(**asdict(t)) for t in card.suppressed],
    )


# ---- Score and Sweep ----------------------------------------------------------------------


def score_request(request: pb.ScoreRequest, request_id: str) -> ScoreRequest:
    return ScoreRequest(
        request.prompt,
        request.continuation,
        _edits(request.edits),
        _refs(request.features),
        request_id,
    )


def score_response(scored: ScoredText) -> pb.ScoreResponse:
    return pb.ScoreResponse(
        tokens=[
            pb.ScoredToken(
                token_id=t.token_id, text=t.text, logprob=t.logprob, activations=t.activations
            )
            for t in scored.tokens
        ],
        mean_logprob=scored.mean_logprob,
        mean_activations=scored.mean_activations,
        prompt_tokens=scored.prompt_tokens,
    )


def sweep_request(request: pb.SweepRequest, request_id: str) -> SweepRequest:
    """EDIT_MODE_UNSPECIFIED is SET (the proto's default)."""
    mode = MODE_OF.get(request.mode, EditMode.SET)
    return SweepRequest(
        FeatureRef(request.feature.sae, request.feature.feature),
        tuple(request.prompts),
        mode,
        tuple(request.strengths),
        request.max_new_tokens,
        request.only_when_active,
        request_id,
    )


def sweep_point(point: SweepPoint) -> pb.SweepPoint:
    message = pb.SweepPoint(
        strength=point.strength,
        value=point.value,
        concept=point.concept,
        logprob=point.logprob,
        repetition=point.repetition,
        texts=point.texts,
    )
    if point.recommendation is not None:
        message.recommendation.CopyFrom(pb.SweepRecommendation(**asdict(point.recommendation)))
    return message
