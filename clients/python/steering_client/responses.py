"""What the server sends back, as frozen dataclasses read from the proto messages.

A generation streams `Chunk`s (with the watched features' activations per token); the last one
carries the finish reason, usage, seed and the edits' receipts. `Completion.from_chunks`
reassembles a stream, and `Comparison` pairs an unsteered and a steered completion of one
request; `ModelDescription` answers DescribeModel (with the server's presets). What Inspect,
SearchFeatures and Contrast answer is in `steering_client.discovery`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.message import Message

from steering_client.edits import Edit
from steering_proto.v1 import steering_pb2 as pb

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# Proto finish reasons -> the words the client uses; a reason newer than these stubs reads as
# "unknown" rather than failing.
FINISH_REASONS: dict[int, str] = {
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_EOS: "eos",
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_CONDITION: "condition",  # a stop rule fired
}


@dataclass(frozen=True)
class Usage:
    """Token counts of a whole request: prompt (BOS included) and generated tokens."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class EditReceipt:
    """What one edit did over the request's steerable positions (prompt and generated tokens).

    `applied_positions`: where it was applied (for an `only_when_active` edit, where the
    feature was active); `active_positions`: where the feature was active before the edit.
    """

    edit: Edit
    applied_positions: int
    active_positions: int

    @classmethod
    def from_proto(cls, msg: pb.EditReceipt) -> EditReceipt:
        return cls(Edit.from_proto(msg.edit), msg.applied_positions, msg.active_positions)

    def __str__(self) -> str:
        """E.g. `demo:7=set:15 applied at 43 positions, active at 2`."""
        positions = "position" if self.applied_positions == 1 else "positions"
        return (
            f"{self.edit} applied at {self.applied_positions} {positions}, "
            f"active at {self.active_positions}"
        )


@dataclass(frozen=True)
class TokenLogprob:
    """One of the most likely tokens at a position: its id, text (decoded alone), logprob."""

    token_id: int
    text: str
    logprob: float


@dataclass(frozen=True)
class TokenLogprobs:
    """A generated token's log-probability (natural log, at temperature 1, before top-k/top-p
    cuts) and the most likely tokens at its position, most likely first (ties: lower id)."""

    logprob: float
    top: tuple[TokenLogprob, ...] = ()

    @classmethod
    def from_proto(cls, msg: pb.TokenLogprobs) -> TokenLogprobs:
        top = tuple(TokenLogprob(t.token_id, t.text, t.logprob) for t in msg.top)
        return cls(msg.logprob, top)


@dataclass(frozen=True)
class Chunk:
    """The tokens generated since the previous chunk, and their text.

    `watched` holds, per token id, the watched features' activations in watch order (empty when
    nothing is watched), each read before that feature's own edit: a feature the request edits
    shows what the model computed there, not the value its edit wrote. `finish_reason`
    ("length", "eos", "stop", or "condition" when a stop rule fired), `usage`, `seed` and
    `receipts` (one per edit in effect) are set on the last chunk only; `seed` is what to pass
    back as `seed=` to reproduce a sampled output.
    """

    token_ids: tuple[int, ...]
    text: str
    finish_reason: str | None = None
    usage: Usage | None = None
    seed: int | None = None
    watched: tuple[tuple[float, ...], ...] = ()
    receipts: tuple[EditReceipt, ...] = ()
    logprobs: tuple[TokenLogprobs, ...] = ()  # per token id, when asked (top_logprobs=)

    @property
    def is_last(self) -> bool:
        return self.finish_reason is not None

    @classmethod
    def from_proto(cls, msg: pb.GenerateResponse) -> Chunk:
        reason = None
        if msg.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
            reason = FINISH_REASONS.get(msg.finish_reason, "unknown")
        usage = None
        if msg.HasField("usage"):
            usage = Usage(msg.usage.prompt_tokens, msg.usage.completion_tokens)
        return cls(
            token_ids=tuple(msg.token_ids),
            text=msg.text,
            finish_reason=reason,
            usage=usage,
            seed=msg.seed if msg.HasField("seed") else None,
            watched=tuple(tuple(token.activations) for token in msg.watched),
            receipts=tuple(EditReceipt.from_proto(receipt) for receipt in msg.receipts),
            logprobs=tuple(TokenLogprobs.from_proto(token) for token in msg.logprobs),
        )


@dataclass(frozen=True)
class Completion:
    """A whole generation: every chunk's tokens, text and watched activations joined, and the
    last chunk's summary and receipts."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: str | None
    usage: Usage | None
    seed: int | None
    watched: tuple[tuple[float, ...], ...] = ()
    receipts: tuple[EditReceipt, ...] = ()
    logprobs: tuple[TokenLogprobs, ...] = ()

    @classmethod
    def from_chunks(cls, chunks: Iterable[Chunk]) -> Completion:
        token_ids: list[int] = []
        texts: list[str] = []
        watched: list[tuple[float, ...]] = []
        logprobs: list[TokenLogprobs] = []
        last: Chunk | None = None
        for chunk in chunks:
            token_ids.extend(chunk.token_ids)
            texts.append(chunk.text)
            watched.extend(chunk.watched)
            logprobs.extend(chunk.logprobs)
            last = chunk
        return cls(
            token_ids=tuple(token_ids),
            text="".join(texts),
            finish_reason=last.finish_reason if last else None,
            usage=last.usage if last else None,
            seed=last.seed if last else None,
            watched=tuple(watched),
            receipts=last.receipts if last else (),
            logprobs=tuple(logprobs),
        )


@dataclass(frozen=True)
class Comparison:
    """The same request run twice (same seed): without its edits, rules and preset, and with."""

    unsteered: Completion
    steered: Completion


@dataclass(frozen=True)
class ModelInfo:
    """The served model: its name, decoder layers, residual width, vocabulary and context."""

    name: str
    num_layers: int
    d_model: int
    vocab_size: int
    context_length: int  # prompt plus generated tokens never exceed it
    chat: bool  # a chat template is loaded: `chat=` requests are accepted
    cuda_graphs: str = ""  # "on", "off" or "fallback: <why>"; empty from an older server
    dtype: str = ""  # "float32", "bfloat16" or "float16"; empty from an older server
    batch_invariance: str = ""  # what keeps results independent of the batch, as in force


@dataclass(frozen=True)
class SaeInfo:
    """An SAE that edits may name: its layer, width (d_sae features), site, how many of its
    features carry a label, its kind ("jumprelu", or "vector" for raw steering vectors served
    as a linear SAE, whose activations may be negative) and the SHA-256 (lowercase hex) of its
    parameter file, which presets pin. Kind and sha256 are empty from an older server."""

    name: str
    layer: int
    d_sae: int
    d_model: int
    site: str
    labels: int
    kind: str = ""
    sha256: str = ""


@dataclass(frozen=True)
class Preset:
    """A named edit set of the server's, which `generate(preset=name)` applies (the request's
    own edits win where both edit one feature)."""

    name: str
    description: str
    edits: tuple[Edit, ...]

    @classmethod
    def from_proto(cls, msg: pb.Preset) -> Preset:
        return cls(msg.name, msg.description, tuple(Edit.from_proto(e) for e in msg.edits))


@dataclass(frozen=True)
class Limits:
    """Bounds the server enforces (see `Limits` in the proto for each one's meaning)."""

    max_prompt_tokens: int
    max_new_tokens: int
    default_max_new_tokens: int
    max_edits_per_request: int
    max_abs_edit_value: float
    max_active_rows: int
    max_queued_requests: int
    max_stop_strings: int
    max_stop_string_chars: int
    max_top_k: int
    max_inspect_features: int
    max_watched_features: int
    max_contrast_texts: int
    max_search_results: int
    max_rules_per_request: int = 0
    max_edits_per_sae: int = 0
    kv_cache_bytes: int = 0
    max_top_logprobs: int = 0


@dataclass(frozen=True)
class ModelDescription:
    """DescribeModel's answer: the model, the SAEs by name, the limits, and the presets."""

    model: ModelInfo
    saes: tuple[SaeInfo, ...]
    limits: Limits
    presets: tuple[Preset, ...] = ()

    def sae(self, name: str) -> SaeInfo:
        """The SAE called `name`; KeyError if the server has none by that name."""
        for info in self.saes:
            if info.name == name:
                return info
        raise KeyError(name)

    def preset(self, name: str) -> Preset:
        """The preset called `name`; KeyError if the server has none by that name."""
        for preset in self.presets:
            if preset.name == name:
                return preset
        raise KeyError(name)

    @classmethod
    def from_proto(cls, msg: pb.DescribeModelResponse) -> ModelDescription:
        return cls(
            model=from_message(ModelInfo, msg.model),
            saes=tuple(from_message(SaeInfo, sae) for sae in msg.saes),
            limits=from_message(Limits, msg.limits),
            presets=tuple(Preset.from_proto(preset) for preset in msg.presets),
        )


_D = TypeVar("_D", bound="DataclassInstance")


def from_message(cls: type[_D], msg: Message) -> _D:
    """A dataclass whose fields are named as the message's scalar fields."""
    values: dict[str, Any] = {f.name: getattr(msg, f.name) for f in fields(cls)}
    return cls(**values)
