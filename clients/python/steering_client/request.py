"""Builds the request protos from a client's arguments, for the sync and async clients.

Checks only the shape the proto cannot express (exactly one of prompt or chat, well-formed chat
messages and feature references, a list of texts rather than one string) and that numbers fit
their fields; values are the server's to validate. A failed check raises ValueError naming the
field.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence

from google.protobuf.message import Message

from steering_client.edits import MODE_TO_PROTO, Edit, FeatureRef, parse_feature_ref
from steering_client.rules import Rule, rules_to_proto
from steering_proto.v1 import steering_pb2 as pb

# One chat message: (role, content), or a mapping with "role" and "content" keys.
ChatMessage = tuple[str, str] | Mapping[str, str]
# One feature to watch or inspect: a FeatureRef, an (sae, feature) pair, or the proto itself.
FeatureLike = FeatureRef | tuple[str, int] | pb.FeatureRef
EditLike = Edit | pb.FeatureEdit
RuleLike = Rule | pb.Rule
SEED_BITS = 63  # a seed compare() picks fits any signed or unsigned 64-bit integer


def build_generate_request(
    prompt: str | None,
    chat: Sequence[ChatMessage] | None,
    edits: Iterable[EditLike],
    sampling: pb.SamplingParams,
    request_id: str,
    watch: Iterable[FeatureLike] = (),
    rules: Iterable[RuleLike] = (),
    preset: str = "",
) -> pb.GenerateRequest:
    request = pb.GenerateRequest(sampling=sampling)
    _set_input(request, prompt, chat)
    _set_scalars(request, {"request_id": request_id, "preset": preset})
    request.edits.extend(_edits(edits))
    request.watch.extend(_feature_refs("watch", watch))
    request.rules.extend(rules_to_proto(rules))
    return request


def build_comparison_requests(
    request: pb.GenerateRequest,
) -> tuple[pb.GenerateRequest, pb.GenerateRequest]:
    """The (unsteered, steered) pair of `compare`: `request` without its edits, rules and
    preset (what it watches is kept), and `request` as it is.

    A non-empty request id gets "/unsteered" and "/steered" appended, to tell the two apart in
    the server's logs. Raises ValueError when the request steers nothing.
    """
    if not (request.edits or request.rules or request.preset):
        raise ValueError("compare: nothing to compare: give edits, rules or a preset")
    unsteered, steered = pb.GenerateRequest(), pb.GenerateRequest()
    unsteered.CopyFrom(request)
    steered.CopyFrom(request)
    for field in ("edits", "rules", "preset"):
        unsteered.ClearField(field)
    if request.request_id:
        unsteered.request_id += "/unsteered"
        steered.request_id += "/steered"
    return unsteered, steered


def comparison_seed(seed: int | None, temperature: float) -> int | None:
    """The seed both runs of `compare` use: the caller's, else for sampling (temperature > 0) a
    random 63-bit one picked here, so that both runs draw the same random numbers. Greedy
    decoding uses no seed: None lets the server pick (and ignore) one."""
    if seed is None and temperature > 0:
        return secrets.randbits(SEED_BITS)
    return seed


def build_inspect_request(
    prompt: str | None,
    chat: Sequence[ChatMessage] | None,
    *,
    saes: Iterable[str],
    top_k: int,
    features: Iterable[FeatureLike],
    edits: Iterable[EditLike],
    no_top: bool = False,
) -> pb.InspectRequest:
    request = pb.InspectRequest()
    _set_input(request, prompt, chat)
    request.saes.extend(_strings("saes", saes))
    _set_scalars(request, {"top_k": top_k, "no_top": no_top})
    request.features.extend(_feature_refs("features", features))
    request.edits.extend(_edits(edits))
    return request


SEARCH_BY = {
    "labels": pb.SEARCH_BY_LABELS,
    "activation": pb.SEARCH_BY_ACTIVATION,
    "both": pb.SEARCH_BY_BOTH,
}


def build_search_request(
    query: str, *, sae: str, limit: int, by: str = "labels"
) -> pb.SearchFeaturesRequest:
    request = pb.SearchFeaturesRequest()
    _set_scalars(request, {"query": query, "sae": sae, "limit": limit})
    if by not in SEARCH_BY:
        raise ValueError(f"by: {by!r} is not one of {', '.join(SEARCH_BY)}")
    if by != "labels":  # the server's default: left unset, as before
        request.by = SEARCH_BY[by]
    return request


def build_feature_card_request(
    feature: FeatureLike | str, *, top_tokens: int
) -> pb.DescribeFeatureRequest:
    """A DescribeFeatureRequest; `feature` a reference or its `SAE:FEATURE` text."""
    ref = _feature_ref(
        "feature", parse_feature_ref(feature) if isinstance(feature, str) else feature
    )
    request = pb.DescribeFeatureRequest(sae=ref.sae, feature=ref.feature)
    _set_scalars(request, {"top_tokens": top_tokens})
    return request


def build_contrast_request(
    a: Iterable[str], b: Iterable[str], *, sae: str, top_k: int
) -> pb.ContrastRequest:
    request = pb.ContrastRequest(a=_strings("a", a), b=_strings("b", b))
    _set_scalars(request, {"sae": sae, "top_k": top_k})
    return request


def sampling_params(
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int | None,
    stop: Iterable[str],
    ignore_eos: bool,
    top_logprobs: int | None = None,
) -> pb.SamplingParams:
    """SamplingParams; 0 means the default for every number, and seed None lets the server pick.

    Raises ValueError naming the field when a value does not fit it (e.g. a negative count).
    """
    values: dict[str, object] = {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "ignore_eos": ignore_eos,
    }
    if seed is not None:
        values["seed"] = seed
    if top_logprobs is not None:
        values["top_logprobs"] = top_logprobs
    params = pb.SamplingParams(stop=list(stop))
    _set_scalars(params, values, prefix="sampling.")
    return params


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries a bearer token (none without a token)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def _set_input(
    request: pb.GenerateRequest | pb.InspectRequest,
    prompt: str | None,
    chat: Sequence[ChatMessage] | None,
) -> None:
    """Sets the request's `input` oneof: exactly one of prompt or chat."""
    if (prompt is None) == (chat is None):
        raise ValueError("give exactly one of prompt or chat")
    if prompt is not None:
        request.prompt = prompt
    elif chat is not None:
        request.chat.SetInParent()  # selects `chat` in the oneof even for an empty list
        request.chat.messages.extend(_chat_message(m) for m in chat)


def build_score_request(
    prompt: str, continuation: str, edits: Iterable[EditLike], features: Iterable[FeatureLike]
) -> pb.ScoreRequest:
    request = pb.ScoreRequest(prompt=prompt, continuation=continuation)
    request.edits.extend(_edits(edits))
    request.features.extend(_feature_refs("features", features))
    return request


def build_sweep_request(
    feature: FeatureLike | str,
    prompts: Iterable[str],
    *,
    mode: str = "set",
    strengths: Iterable[float] = (),
    max_new_tokens: int = 0,
    only_when_active: bool = False,
) -> pb.SweepRequest:
    if isinstance(feature, str):
        feature = parse_feature_ref(feature)
    if mode not in MODE_TO_PROTO or mode == "ablate":
        raise ValueError(f"mode: expected set, add or scale, got {mode!r}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: must not be negative, got {max_new_tokens}")
    return pb.SweepRequest(
        feature=_feature_ref("feature", feature),
        mode=MODE_TO_PROTO[mode],
        strengths=list(strengths),
        prompts=_strings("prompts", prompts),
        max_new_tokens=max_new_tokens,
        only_when_active=only_when_active,
    )


def _set_scalars(msg: Message, values: Mapping[str, object], *, prefix: str = "") -> None:
    """Sets each scalar field, raising ValueError naming the field when a value does not fit."""
    for name, value in values.items():
        try:
            setattr(msg, name, value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{prefix}{name}: {error}") from None


def _edits(edits: Iterable[EditLike]) -> list[pb.FeatureEdit]:
    return [e.to_proto() if isinstance(e, Edit) else e for e in edits]


def _feature_refs(field: str, refs: Iterable[FeatureLike]) -> list[pb.FeatureRef]:
    return [_feature_ref(f"{field}[{i}]", ref) for i, ref in enumerate(refs)]


def _feature_ref(field: str, ref: FeatureLike) -> pb.FeatureRef:
    if isinstance(ref, FeatureRef):
        return ref.to_proto()
    if isinstance(ref, pb.FeatureRef):
        return ref
    if isinstance(ref, tuple) and len(ref) == 2:
        sae, feature = ref
        if isinstance(sae, str) and isinstance(feature, int) and not isinstance(feature, bool):
            try:
                return FeatureRef(sae, feature).to_proto()
            except ValueError as error:
                raise ValueError(f"{field}: {error}") from None
    raise ValueError(f"{field}: {ref!r} is not a FeatureRef or an (sae, feature) pair")


def _strings(field: str, values: Iterable[str]) -> list[str]:
    """The texts (or names) of a repeated string field; one bare str is refused, not split."""
    if isinstance(values, str):
        raise ValueError(f"{field}: give a list of strings, not one string")
    texts = list(values)
    for i, value in enumerate(texts):
        if not isinstance(value, str):
            raise ValueError(f"{field}[{i}]: {value!r} is not a string")
    return texts


def _chat_message(message: ChatMessage) -> pb.ChatMessage:
    if isinstance(message, Mapping):
        try:
            return pb.ChatMessage(role=message["role"], content=message["content"])
        except KeyError as missing:
            raise ValueError(f"chat message {message!r} lacks {missing}") from None
    if isinstance(message, tuple) and len(message) == 2:
        role, content = message
        return pb.ChatMessage(role=role, content=content)
    raise ValueError(f"chat message {message!r} is not a (role, content) pair")
