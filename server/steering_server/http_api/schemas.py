"""Pydantic models of every HTTP body, in and out: what `/openapi.json` describes.

Edits and feature references are accepted as the CLI's strings (`SAE:FEATURE=MODE[:VALUE]
[@active]`, `SAE:FEATURE`) or as objects; a string is parsed here, so a bad one is a 400 naming
its place in the body. Whether an SAE, feature or value is acceptable is the core's to say.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from steering.steer.presets import parse_edit

EDIT_GRAMMAR = "SAE:FEATURE=MODE[:VALUE][@active]"
REF_GRAMMAR = "SAE:FEATURE"


def _lone_surrogate(value: Any) -> bool:
    """Whether a string in `value` holds half a surrogate pair: JSON can write one ("\\ud800"),
    but it is no Unicode text, and no tokenizer or encoder takes it."""
    if isinstance(value, str):
        return not value.isascii() and any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, list):
        return any(_lone_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    return False


# What a watched value is, said wherever one is described.
WATCH_NOTE = (
    "read before the feature's own edit: a watched feature the request also edits shows the "
    "value the model computed there, not the value its edit wrote (often 0 under set or add)"
)


class _Text(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _unicode(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                if _lone_surrogate(key) or _lone_surrogate(value):
                    raise ValueError(f"{key!r} holds a lone surrogate: not Unicode text")
        return data


class Body(_Text):
    """A request body: unknown keys are kept (OpenAI clients send many) and checked by name
    where they would change the output (see `convert.unsupported`)."""

    model_config = ConfigDict(extra="allow")


class Strict(_Text):
    model_config = ConfigDict(extra="forbid")


class EditBody(Strict):
    """One feature edit: f' = value (set), f + value (add), value·f (scale), 0 (ablate)."""

    sae: str
    feature: int
    mode: Literal["set", "add", "scale", "ablate"]
    value: float = 0.0
    only_when_active: bool = False
    relative: bool = False  # value x the feature's typical maximum (set and add only)


class RefBody(Strict):
    """One feature of one SAE."""

    sae: str
    feature: int


def _edit_from_string(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    edit = parse_edit(value)  # ValueError: a 400 naming this edit's place
    return {
        "sae": edit.sae,
        "feature": edit.feature,
        "mode": edit.mode.value,
        "value": edit.value,
        "only_when_active": edit.only_when_active,
        "relative": edit.relative,
    }


def _ref_from_string(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    sae, colon, feature = value.strip().rpartition(":")
    if not (colon and sae and feature.isascii() and feature.isdigit()) or "=" in value:
        raise ValueError(f"expected {REF_GRAMMAR}, e.g. demo:632, got {value!r}")
    return {"sae": sae, "feature": int(feature)}


Edit = Annotated[
    EditBody,
    BeforeValidator(_edit_from_string, json_schema_input_type=str | EditBody),
    Field(description=f"an edit: the string {EDIT_GRAMMAR} or an object"),
]
Ref = Annotated[
    RefBody,
    BeforeValidator(_ref_from_string, json_schema_input_type=str | RefBody),
    Field(description=f"a feature: the string {REF_GRAMMAR} or an object"),
]


class RuleBody(Strict):
    """When `when` is above `above`: apply edits from the next position on, or stop."""

    when: Ref
    above: float
    apply: list[Edit] = Field(default_factory=list)
    stop: bool = False


class SteeringBody(Strict):
    """The `steering` object of a completion request (GenerateRequest's steering fields)."""

    edits: list[Edit] = Field(default_factory=list)
    preset: str = ""
    watch: list[Ref] = Field(
        default_factory=list,
        description="Features whose activations come back per generated token, each " + WATCH_NOTE,
    )
    rules: list[RuleBody] = Field(default_factory=list)


class StreamOptions(Strict):
    include_usage: bool = False


class Sampling(Body):
    """The OpenAI fields both completion routes share; refused ones are listed to be named."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None  # None: 1.0, as OpenAI defines it
    top_p: float | None = None
    top_k: int | None = None  # vLLM's extension
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    ignore_eos: bool = False  # vLLM's extension
    n: int | None = None
    logprobs: Any = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    steering: SteeringBody | None = None


class CompletionRequest(Sampling):
    prompt: str | list[str]
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None


class TextPart(Strict):
    type: str
    text: str = ""


class Message(Body):
    role: str
    content: str | list[TextPart] | None = None


class ChatRequest(Sampling):
    messages: list[Message]
    max_completion_tokens: int | None = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    response_format: Any = None


# ---- answers ------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ReceiptBody(BaseModel):
    edit: str  # as EDIT_GRAMMAR
    applied_positions: int
    active_positions: int


class WatchedBody(BaseModel):
    token: str
    token_id: int
    activations: list[float] = Field(
        description="The watched features' activations at the position whose forward produced "
        "this token, in `steering.watch` order; each " + WATCH_NOTE
    )


class SteeringAnswer(BaseModel):
    """What the steering did: present when the request steered or watched."""

    finish_reason: Literal["eos", "stop", "length", "condition"] | None = None
    receipts: list[ReceiptBody] = Field(default_factory=list)
    watched: list[WatchedBody] = Field(default_factory=list)


class TopLogprobBody(BaseModel):
    """One of the most likely tokens at a position (OpenAI's chat shape)."""

    token: str  # decoded alone
    logprob: float
    bytes: list[int] | None  # the UTF-8 bytes of `token`


class TokenLogprobBody(TopLogprobBody):
    """A generated token with the most likely tokens at its position, most likely first."""

    top_logprobs: list[TopLogprobBody]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprobBody] | None
    refusal: list[TokenLogprobBody] | None = None


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy completions shape: per generated token its text, its log-probability,
    the most likely tokens (text -> logprob, the chosen one included) and where its text starts
    in the completion."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: CompletionLogprobs | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: ChatLogprobs | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: ChatLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    steering: SteeringAnswer | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    steering: SteeringAnswer | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    steering: SteeringAnswer | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "steering-server"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


# ---- the steering JSON routes (the proto's names, snake_case) ---------------------------------


class ChatBody(Strict):
    messages: list[Message]


class InspectBody(Strict):
    prompt: str | None = None
    chat: ChatBody | None = None
    saes: list[str] = Field(default_factory=list)
    top_k: int = 0
    features: list[Ref] = Field(default_factory=list)
    edits: list[Edit] = Field(default_factory=list)
    no_top: bool = False


class SearchBody(Strict):
    query: str
    sae: str = ""
    limit: int = 0
    by: Literal["labels", "activation", "both"] = "labels"


class ContrastBody(Strict):
    a: list[str]
    b: list[str]
    sae: str = ""
    top_k: int = 0


class FeatureActivationBody(BaseModel):
    sae: str
    feature: int
    activation: float
    label: str
    typical_max: float = 0.0  # the feature's typical maximum activation; 0: unknown


class InspectedTokenBody(BaseModel):
    token_id: int
    text: str
    special: bool
    top: list[FeatureActivationBody]
    features: list[FeatureActivationBody]


class InspectAnswer(BaseModel):
    tokens: list[InspectedTokenBody]


class FeatureMatchBody(BaseModel):
    sae: str
    feature: int
    label: str
    score: float
    typical_max: float = 0.0  # 0: unknown
    frequency: float = 0.0  # 0: unknown
    found_by: str = "labels"  # or "activation"


class SearchAnswer(BaseModel):
    matches: list[FeatureMatchBody]


class TokenWeightBody(BaseModel):
    token_id: int
    text: str  # the token decoded alone
    weight: float  # W_dec[i] · W_U of the token


class FeatureCardBody(BaseModel):
    """DescribeFeature: a feature's label, typical maximum and frequency (0: unknown), top
    contexts, and the tokens its decoder direction promotes (largest W_dec[i] · W_U first) and
    suppresses (smallest first)."""

    sae: str
    feature: int
    label: str
    typical_max: float
    frequency: float
    top_contexts: list[str]
    promoted: list[TokenWeightBody]
    suppressed: list[TokenWeightBody]


class FeatureContrastBody(BaseModel):
    sae: str
    feature: int
    mean_a: float
    mean_b: float
    label: str


class ContrastAnswer(BaseModel):
    toward_a: list[FeatureContrastBody]
    toward_b: list[FeatureContrastBody]


class ScoreBody(Strict):
    prompt: str
    continuation: str
    edits: list[Edit] = Field(default_factory=list)
    features: list[Ref] = Field(default_factory=list)


class ScoredTokenBody(BaseModel):
    token_id: int
    text: str
    logprob: float
    activations: list[float]


class ScoreAnswer(BaseModel):
    tokens: list[ScoredTokenBody]
    mean_logprob: float
    mean_activations: list[float]
    prompt_tokens: int


class SweepBody(Strict):
    feature: Ref
    prompts: list[str]
    mode: Literal["set", "add", "scale"] = "set"
    strengths: list[float] = Field(default_factory=list)  # empty: 0, 0.25, 0.5, 1, 1.5, 2, 4, 8
    max_new_tokens: int = 0
    only_when_active: bool = False


class SweepRecommendationBody(BaseModel):
    found: bool
    strength: float
    value: float
    reason: str


class SweepPointBody(BaseModel):
    strength: float
    value: float
    concept: float
    logprob: float
    repetition: float
    texts: list[str]


class SweepAnswer(BaseModel):
    points: list[SweepPointBody]
    recommendation: SweepRecommendationBody


class ModelInfoBody(BaseModel):
    name: str
    num_layers: int
    d_model: int
    vocab_size: int
    context_length: int
    chat: bool
    cuda_graphs: str
    dtype: str
    batch_invariance: str


class SaeInfoBody(BaseModel):
    name: str
    layer: int
    d_sae: int
    d_model: int
    site: str
    labels: int
    kind: str
    sha256: str


class PresetBody(BaseModel):
    name: str
    description: str
    edits: list[EditBody]


class DescribeAnswer(BaseModel):
    model: ModelInfoBody
    saes: list[SaeInfoBody]
    limits: dict[str, float]
    presets: list[PresetBody]


class HealthAnswer(BaseModel):
    status: Literal["serving", "loading", "draining"]
