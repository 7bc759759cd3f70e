"""Requests as the core takes them, their limits, and every rule about them, in one place.

`TextRequest` is what a caller sends the front end (text, a chat, sampling, edits);
`GenerationRequest` is what the engine takes (token ids). `validate_text` checks the first
before any tokenizing, `validate_request` the second; both apply the same `Limits`.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from steering.edits import DEFAULT_MAX_ABS_VALUE, EditMode, FeatureEdit, validate_edits
from steering.errors import InvalidRequestError

# Below this, logits / temperature overflows float32 for ordinary logits (1e-45 turns 1.0 into
# inf and the draw into NaN); sampling so cold is greedy in all but exact ties: ask for 0.
MIN_TEMPERATURE = 1e-3
MAX_TEMPERATURE = 100.0
CHAT_ROLES = ("system", "user", "model", "assistant")
DEFAULT_TOP_K = 8  # Inspect and Contrast, when a request says 0
DEFAULT_SEARCH_RESULTS = 10
# What one entry of a reply (a feature with its SAE's name and label) and one row (an Inspect
# token with its text) take besides those strings, at most, in protobuf or in JSON: field tags
# or keys, lengths, quotes and the numbers. (JSON escapes of unusual characters aside.)
REPLY_ENTRY_BYTES = 80
REPLY_ROW_BYTES = 48


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 0  # 0: the engine's default
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 0 or 1: off
    seed: int | None = None  # None: a fresh random seed, reported back
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()  # stop strings: the front end's, the engine never sees text
    # Set: each generated token carries its log-probability and this many most likely tokens
    # with theirs (0..Limits.max_top_logprobs); None: no log-probabilities.
    top_logprobs: int | None = None


@dataclass(frozen=True)
class FeatureRef:
    sae: str
    feature: int


@dataclass(frozen=True)
class Rule:
    """When `when` is above `above` at a steerable position, apply edits from the next position
    on, or stop the request. Fires once. Exactly one of `apply` (non-empty) or `stop`."""

    when: FeatureRef
    above: float
    apply: tuple[FeatureEdit, ...] = ()
    stop: bool = False


@dataclass(frozen=True)
class InspectSpec:
    """What a prefill-only request reads at every position of its prompt."""

    saes: tuple[str, ...] = ()  # whose top features (and means) to read
    top_k: int = 0  # top features per position and SAE (0: none)
    features: tuple[FeatureRef, ...] = ()  # named features, in this order
    means: bool = False  # each SAE's mean activation over the steerable positions (Contrast)
    # Score: the log-probability of every prompt token from this position on (each read at the
    # position before it); 0: none. Between 1 and the prompt's length - 1.
    score_from: int = 0


@dataclass(frozen=True)
class ChatMessage:
    role: str  # one of CHAT_ROLES
    content: str


@dataclass(frozen=True)
class TextRequest:
    """A generation as a caller asks for it: exactly one of `prompt` or `chat`."""

    prompt: str | None = None  # tokenized as the tokenizer does by default (one BOS)
    chat: tuple[ChatMessage, ...] | None = None  # rendered by the chat template, one BOS
    sampling: SamplingParams = SamplingParams()
    edits: tuple[FeatureEdit, ...] = ()
    request_id: str = ""  # the caller's label, for logs
    watch: tuple[FeatureRef, ...] = ()  # read at the position that produced each token
    rules: tuple[Rule, ...] = ()
    preset: str = ""  # a named edit set; the request's own edits win on the same feature


@dataclass(frozen=True)
class InspectRequest:
    """Read a text (prompt or chat, with its edits) and report features at every token."""

    text: TextRequest  # its input and edits; its sampling is not used
    saes: tuple[str, ...] = ()  # whose top features to report; empty: all
    top_k: int = 0  # 0: DEFAULT_TOP_K
    features: tuple[FeatureRef, ...] = ()
    no_top: bool = False  # no top lists, no full encode: only `features` are read (top_k 0)


@dataclass(frozen=True)
class ContrastRequest:
    """Two sets of texts, each tokenized as a prompt; the features that separate them."""

    a: tuple[str, ...]
    b: tuple[str, ...]
    sae: str = ""  # rank this SAE's features only; empty: all together
    top_k: int = 0  # 0: DEFAULT_TOP_K


@dataclass(frozen=True)
class ScoreRequest:
    """A text read as one prefill (optionally steered): `prompt` (with BOS) is the context,
    `continuation` (its own tokens, no BOS) is scored token by token."""

    prompt: str
    continuation: str
    edits: tuple[FeatureEdit, ...] = ()
    features: tuple[FeatureRef, ...] = ()  # read at every continuation token, in this order
    request_id: str = ""


# Sweep strengths when a request gives none: multiples of the typical maximum where known.
DEFAULT_SWEEP_STRENGTHS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class SweepRequest:
    """One feature's edit at several strengths on several prompts, greedy; each output then
    scored unsteered. `strengths` empty: DEFAULT_SWEEP_STRENGTHS."""

    feature: FeatureRef
    prompts: tuple[str, ...]
    mode: EditMode = EditMode.SET
    strengths: tuple[float, ...] = ()
    max_new_tokens: int = 0  # 0: Limits.default_max_new_tokens
    only_when_active: bool = False
    request_id: str = ""


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams = SamplingParams()
    edits: tuple[FeatureEdit, ...] = ()
    request_id: str = ""  # the caller's label, for logs; the engine keys requests itself
    watch: tuple[FeatureRef, ...] = ()
    inspect: InspectSpec | None = None  # set: prefill only, no token is generated
    rules: tuple[Rule, ...] = ()


class SearchBy(enum.Enum):
    """What a feature search reads: the labels' words, the model's reading of the query, or
    both (label hits first)."""

    LABELS = "labels"
    ACTIVATION = "activation"
    BOTH = "both"


class FinishReason(enum.Enum):
    LENGTH = "length"  # max_new_tokens or the model's context length
    EOS = "eos"  # an end-of-sequence token
    STOP = "stop"  # a stop string, found by the front end (see `Engine.finish`)
    ABORTED = "aborted"  # the caller went away
    ERROR = "error"  # this request failed inside the engine
    PREFILLED = "prefilled"  # a prefill-only request (Inspect, Contrast) read its prompt
    CONDITION = "condition"  # a stop rule fired


@dataclass(frozen=True)
class Receipt:
    """What one edit did: steerable positions where it applied, and where its feature was
    active before it, over the positions the request's forwards processed."""

    edit: FeatureEdit
    applied: int
    active: int


@dataclass(frozen=True)
class Limits:
    """What the server accepts: one name per limit, in settings, DescribeModel and clients."""

    max_prompt_tokens: int = 4096
    max_new_tokens: int = 1024
    default_max_new_tokens: int = 64
    max_edits_per_request: int = 64
    max_abs_edit_value: float = DEFAULT_MAX_ABS_VALUE
    max_active_rows: int = 16
    max_queued_requests: int = 64
    max_stop_strings: int = 8
    max_stop_string_chars: int = 64
    max_top_k: int = 64
    max_inspect_features: int = 64
    max_watched_features: int = 16
    max_contrast_texts: int = 256
    max_search_results: int = 100
    max_rules_per_request: int = 16
    # Edits a request holds on one SAE, its rules' included: the width of the per-slot tables.
    max_edits_per_sae: int = 64
    max_query_chars: int = 1000  # of a SearchFeatures query
    max_top_logprobs: int = 20  # most likely tokens reported per generated token
    max_sweep_prompts: int = 8  # prompts in one Sweep
    max_sweep_strengths: int = 12  # strengths in one Sweep


def validate_text(
    request: TextRequest, limits: Limits, d_sae_of: Mapping[str, int], *, chat: bool
) -> None:
    """Raise InvalidRequestError naming the field if `request` breaks a rule; before tokenizing.

    `chat`: whether a chat template is loaded. Token counts are `validate_request`'s to check.
    """
    if (request.prompt is None) == (request.chat is None):
        raise InvalidRequestError("input", "set either prompt or chat")
    if request.prompt is not None and not request.prompt.strip():
        raise InvalidRequestError("prompt", "the prompt is empty")
    if request.chat is not None:
        _validate_chat(request.chat, chat)
    validate_options(request.sampling, request.edits, limits, d_sae_of)
    validate_refs(request.watch, d_sae_of, "watch", limits.max_watched_features)
    validate_rules(request.rules, request.edits, limits, d_sae_of)


def validate_request(
    request: GenerationRequest, limits: Limits, d_sae_of: Mapping[str, int]
) -> None:
    """Raise InvalidRequestError naming the field if `request` breaks a limit."""
    n_prompt = len(request.prompt_ids)
    if n_prompt == 0:
        raise InvalidRequestError("prompt", "the prompt is empty")
    if n_prompt > limits.max_prompt_tokens:
        raise InvalidRequestError(
            "prompt",
            f"the prompt has {n_prompt} tokens, more than the limit of {limits.max_prompt_tokens}",
        )
    validate_options(request.sampling, request.edits, limits, d_sae_of)
    validate_refs(request.watch, d_sae_of, "watch", limits.max_watched_features)
    validate_rules(request.rules, request.edits, limits, d_sae_of)
    if request.inspect is not None:
        validate_inspect(request.inspect, limits, d_sae_of)
        if not 0 <= request.inspect.score_from < n_prompt:
            raise InvalidRequestError(
                "continuation",
                f"scoring from position {request.inspect.score_from} of a text of {n_prompt} "
                "tokens: nothing to score",
            )


def validate_rules(
    rules: Sequence[Rule],
    edits: Sequence[FeatureEdit],
    limits: Limits,
    d_sae_of: Mapping[str, int],
) -> None:
    """Rules: bounded, each with one action; their edits valid, and no feature edited twice
    across the request's edits (its preset's already merged in) and every rule's."""
    if len(rules) > limits.max_rules_per_request:
        raise InvalidRequestError(
            "rules", f"{len(rules)} rules, more than the limit of {limits.max_rules_per_request}"
        )
    edited = {(e.sae, e.feature) for e in edits}
    for i, rule in enumerate(rules):
        where = f"rules[{i}]"
        _check_ref(rule.when, d_sae_of, f"{where}.when")
        if not math.isfinite(rule.above):
            raise InvalidRequestError(f"{where}.above", f"must be finite, got {rule.above}")
        if rule.stop == bool(rule.apply):
            raise InvalidRequestError(where, "set exactly one action: apply edits, or stop: true")
        field = f"{where}.apply.edits"
        if len(rule.apply) > limits.max_edits_per_request:
            raise InvalidRequestError(
                field,
                f"{len(rule.apply)} edits, more than the limit of {limits.max_edits_per_request}",
            )
        validate_edits(rule.apply, d_sae_of, max_abs_value=limits.max_abs_edit_value, field=field)
        for j, edit in enumerate(rule.apply):
            if (edit.sae, edit.feature) in edited:
                raise InvalidRequestError(
                    f"{field}[{j}].feature",
                    f"feature {edit.feature} of SAE {edit.sae!r} is already edited by the "
                    "request, its preset or another rule",
                )
            edited.add((edit.sae, edit.feature))
    on_sae = Counter(sae for sae, _ in edited)
    for sae, count in sorted(on_sae.items()):
        if count > limits.max_edits_per_sae:
            raise InvalidRequestError(
                "edits",
                f"{count} edits of SAE {sae!r}, the rules' included, more than the limit of "
                f"{limits.max_edits_per_sae}",
            )


def validate_contrast(
    request: ContrastRequest, limits: Limits, d_sae_of: Mapping[str, int]
) -> None:
    """The sets' sizes and texts, the SAE and top_k; before any tokenizing."""
    for field, texts in (("a", request.a), ("b", request.b)):
        if not 1 <= len(texts) <= limits.max_contrast_texts:
            raise InvalidRequestError(
                field, f"must hold 1 to {limits.max_contrast_texts} texts, got {len(texts)}"
            )
        for i, text in enumerate(texts):
            if not text.strip():
                raise InvalidRequestError(f"{field}[{i}]", "the text is empty")
    if request.sae:
        _check_sae(request.sae, d_sae_of, "sae")
    _check_top_k(request.top_k, limits)


def validate_score(request: ScoreRequest, limits: Limits, d_sae_of: Mapping[str, int]) -> None:
    """A Score's texts, edits and features; before tokenizing (token counts: the front end)."""
    if not request.prompt.strip():
        raise InvalidRequestError("prompt", "the prompt is empty")
    if not request.continuation:
        raise InvalidRequestError("continuation", "the continuation is empty: nothing to score")
    validate_options(SamplingParams(), request.edits, limits, d_sae_of)
    validate_refs(request.features, d_sae_of, "features", limits.max_inspect_features)


def validate_sweep(request: SweepRequest, limits: Limits, d_sae_of: Mapping[str, int]) -> None:
    """A Sweep's feature, mode, strengths, prompts and length; before tokenizing."""
    _check_ref(request.feature, d_sae_of, "feature")
    if request.mode is EditMode.ABLATE:
        raise InvalidRequestError("mode", "ABLATE has no strength to sweep: use SET, ADD or SCALE")
    if len(request.strengths) > limits.max_sweep_strengths:
        raise InvalidRequestError(
            "strengths",
            f"{len(request.strengths)} strengths, more than the limit of "
            f"{limits.max_sweep_strengths}",
        )
    for i, strength in enumerate(request.strengths):
        if not math.isfinite(strength):
            raise InvalidRequestError(f"strengths[{i}]", f"must be finite, got {strength}")
        if strength in request.strengths[:i]:
            raise InvalidRequestError(f"strengths[{i}]", f"{strength:g} is given twice")
    if not 1 <= len(request.prompts) <= limits.max_sweep_prompts:
        raise InvalidRequestError(
            "prompts",
            f"must hold 1 to {limits.max_sweep_prompts} prompts, got {len(request.prompts)}",
        )
    for i, prompt in enumerate(request.prompts):
        if not prompt.strip():
            raise InvalidRequestError(f"prompts[{i}]", "the prompt is empty")
    if not 0 <= request.max_new_tokens <= limits.max_new_tokens:
        raise InvalidRequestError(
            "max_new_tokens",
            f"must be between 0 and {limits.max_new_tokens}, got {request.max_new_tokens}",
        )


def _check_top_k(top_k: int, limits: Limits) -> None:
    if not 0 <= top_k <= limits.max_top_k:
        raise InvalidRequestError("top_k", f"must be between 0 and {limits.max_top_k}, got {top_k}")


def reply_bytes(
    rows: int, entries_per_row: int, entry_text_bytes: int, row_text_bytes: int = 0
) -> int:
    """An upper bound on the size of a reply: `rows` rows (Inspect: tokens) whose texts take
    `row_text_bytes` in all, each with `entries_per_row` entries (features) whose strings (SAE
    name and label, UTF-8) take at most `entry_text_bytes`."""
    entry = REPLY_ENTRY_BYTES + entry_text_bytes
    return rows * (REPLY_ROW_BYTES + entries_per_row * entry) + row_text_bytes


def validate_reply_size(size: int, max_message_bytes: int | None, field: str, remedy: str) -> None:
    """Refuse, before the work, a call whose reply (`size`, from `reply_bytes`) could exceed
    the transport's message limit; None: no limit."""
    if max_message_bytes is not None and size > max_message_bytes:
        raise InvalidRequestError(
            field,
            f"the reply could take up to {size} bytes, more than the message limit "
            f"max_message_bytes = {max_message_bytes}: {remedy}",
        )


def validate_query(query: str, limits: Limits) -> None:
    if not query.strip():
        raise InvalidRequestError("query", "the query is empty")
    if len(query) > limits.max_query_chars:
        raise InvalidRequestError(
            "query",
            f"{len(query)} characters, more than the limit of {limits.max_query_chars}",
        )


def inspect_top_k(request: InspectRequest) -> int:
    """Top features per token and SAE an Inspect asks for: 0 under no_top (which then needs
    top_k 0), else its top_k or DEFAULT_TOP_K."""
    if request.no_top:
        if request.top_k:
            raise InvalidRequestError("top_k", f"must be 0 when no_top is set, got {request.top_k}")
        return 0
    return request.top_k or DEFAULT_TOP_K


def validate_inspect(spec: InspectSpec, limits: Limits, d_sae_of: Mapping[str, int]) -> None:
    for i, name in enumerate(spec.saes):
        _check_sae(name, d_sae_of, f"saes[{i}]")
    _check_top_k(spec.top_k, limits)
    validate_refs(spec.features, d_sae_of, "features", limits.max_inspect_features)


def validate_refs(
    refs: Sequence[FeatureRef], d_sae_of: Mapping[str, int], field: str, most: int
) -> None:
    """Named features: at most `most`, each of a served SAE and in its range."""
    if len(refs) > most:
        raise InvalidRequestError(field, f"{len(refs)} features, more than the limit of {most}")
    for i, ref in enumerate(refs):
        _check_ref(ref, d_sae_of, f"{field}[{i}]")


def _check_ref(ref: FeatureRef, d_sae_of: Mapping[str, int], field: str) -> None:
    width = _check_sae(ref.sae, d_sae_of, f"{field}.sae")
    if not 0 <= ref.feature < width:
        raise InvalidRequestError(
            f"{field}.feature",
            f"feature {ref.feature} is out of range for SAE {ref.sae!r} (width {width})",
        )


def _check_sae(name: str, d_sae_of: Mapping[str, int], field: str) -> int:
    if name not in d_sae_of:
        known = ", ".join(sorted(d_sae_of)) or "none"
        raise InvalidRequestError(field, f"unknown SAE {name!r} (served: {known})")
    return d_sae_of[name]


def validate_options(
    sampling: SamplingParams,
    edits: Sequence[FeatureEdit],
    limits: Limits,
    d_sae_of: Mapping[str, int],
) -> None:
    """The sampling parameters, stop strings and edits of a request."""
    _validate_sampling(sampling, limits)
    _validate_stop(sampling.stop, limits)
    if len(edits) > limits.max_edits_per_request:
        raise InvalidRequestError(
            "edits",
            f"{len(edits)} edits, more than the limit of {limits.max_edits_per_request}",
        )
    validate_edits(edits, d_sae_of, max_abs_value=limits.max_abs_edit_value)


def _validate_chat(messages: Sequence[ChatMessage], chat: bool) -> None:
    if not chat:
        raise InvalidRequestError("chat", "the model has no chat template: send a prompt")
    if not messages:
        raise InvalidRequestError("chat.messages", "a chat needs at least one message")
    for i, message in enumerate(messages):
        if message.role not in CHAT_ROLES:
            raise InvalidRequestError(
                f"chat.messages[{i}].role",
                f"unknown role {message.role!r} (known: {', '.join(CHAT_ROLES)})",
            )
    if not any(m.content.strip() for m in messages):
        raise InvalidRequestError("chat.messages", "every message is empty")


def _validate_sampling(s: SamplingParams, limits: Limits) -> None:
    if not 0 <= s.max_new_tokens <= limits.max_new_tokens:
        raise InvalidRequestError(
            "sampling.max_new_tokens",
            f"must be between 0 and {limits.max_new_tokens}, got {s.max_new_tokens}",
        )
    t = s.temperature
    if not (math.isfinite(t) and (t == 0.0 or MIN_TEMPERATURE <= t <= MAX_TEMPERATURE)):
        raise InvalidRequestError(
            "sampling.temperature",
            f"must be 0 (greedy) or between {MIN_TEMPERATURE:g} and {MAX_TEMPERATURE:g}, got {t}",
        )
    if s.top_k < 0:
        raise InvalidRequestError("sampling.top_k", f"must not be negative, got {s.top_k}")
    if not 0.0 <= s.top_p <= 1.0:  # also false for NaN
        raise InvalidRequestError("sampling.top_p", f"must be between 0 and 1, got {s.top_p}")
    if s.seed is not None and not 0 <= s.seed < 2**64:
        raise InvalidRequestError("sampling.seed", f"must be between 0 and 2**64 - 1, got {s.seed}")
    _validate_top_logprobs(s.top_logprobs, limits)


def _validate_top_logprobs(top: int | None, limits: Limits) -> None:
    if top is not None and not 0 <= top <= limits.max_top_logprobs:
        raise InvalidRequestError(
            "sampling.top_logprobs",
            f"must be between 0 and {limits.max_top_logprobs}, got {top}",
        )


def _validate_stop(stop: Sequence[str], limits: Limits) -> None:
    if len(stop) > limits.max_stop_strings:
        raise InvalidRequestError(
            "sampling.stop",
            f"{len(stop)} stop strings, more than the limit of {limits.max_stop_strings}",
        )
    for i, text in enumerate(stop):
        if not text or len(text) > limits.max_stop_string_chars:
            raise InvalidRequestError(
                f"sampling.stop[{i}]", f"must have 1 to {limits.max_stop_string_chars} characters"
            )


# ---- feature cards ----------------------------------------------------------------------------

DEFAULT_TOP_TOKENS = 10  # promoted and suppressed tokens of a card, when a request says 0


@dataclass(frozen=True)
class FeatureCardRequest:
    """Describe one feature: its label file's facts and the tokens its direction moves."""

    sae: str
    feature: int
    top_tokens: int = 0  # each of promoted and suppressed; 0: DEFAULT_TOP_TOKENS


def validate_feature_card(
    request: FeatureCardRequest, limits: Limits, d_sae_of: Mapping[str, int]
) -> None:
    width = _check_sae(request.sae, d_sae_of, "sae")
    if not 0 <= request.feature < width:
        raise InvalidRequestError(
            "feature",
            f"feature {request.feature} is out of range for SAE {request.sae!r} (width {width})",
        )
    if not 0 <= request.top_tokens <= limits.max_top_k:
        raise InvalidRequestError(
            "top_tokens", f"must be between 0 and {limits.max_top_k}, got {request.top_tokens}"
        )
