"""Proto <-> domain, in one place: requests in (validated, with field names), responses out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from steering.edits import EditMode, FeatureEdit
from steering.errors import InvalidRequestError
from steering.requests import FinishReason, Limits, SamplingParams
from steering_proto.v1 import steering_pb2 as pb

MODE_OF = {
    pb.EDIT_MODE_SET: EditMode.SET,
    pb.EDIT_MODE_ADD: EditMode.ADD,
    pb.EDIT_MODE_SCALE: EditMode.SCALE,
    pb.EDIT_MODE_ABLATE: EditMode.ABLATE,
}
FINISH_OF = {
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.EOS: pb.FINISH_REASON_EOS,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
}
CHAT_ROLES = ("system", "user", "model", "assistant")


@dataclass(frozen=True)
class ParsedRequest:
    """A Generate call in domain terms, before tokenizing."""

    prompt: str | None
    chat: tuple[tuple[str, str], ...] | None  # (role, content)
    sampling: SamplingParams
    edits: tuple[FeatureEdit, ...]
    stop: tuple[str, ...]
    request_id: str


@dataclass(frozen=True)
class StopLimits:
    max_stop_strings: int
    max_stop_string_chars: int


def parse_generate(request: pb.GenerateRequest, stop_limits: StopLimits) -> ParsedRequest:
    """The call's fields as domain values; range checks on numbers happen in the engine."""
    which = request.WhichOneof("input")
    prompt, chat = None, None
    if which == "prompt":
        if not request.prompt.strip():
            raise InvalidRequestError("prompt", "the prompt is empty")
        prompt = request.prompt
    elif which == "chat":
        chat = _chat(request.chat)
    else:
        raise InvalidRequestError("input", "set either prompt or chat")
    return ParsedRequest(
        prompt=prompt,
        chat=chat,
        sampling=_sampling(request.sampling),
        edits=tuple(_edit(i, e) for i, e in enumerate(request.edits)),
        stop=_stop(request.sampling.stop, stop_limits),
        request_id=request.request_id,
    )


def _chat(chat: pb.Chat) -> tuple[tuple[str, str], ...]:
    if not chat.messages:
        raise InvalidRequestError("chat.messages", "a chat needs at least one message")
    for i, message in enumerate(chat.messages):
        if message.role not in CHAT_ROLES:
            raise InvalidRequestError(
                f"chat.messages[{i}].role",
                f"unknown role {message.role!r} (known: {', '.join(CHAT_ROLES)})",
            )
    if not any(m.content.strip() for m in chat.messages):
        raise InvalidRequestError("chat.messages", "every message is empty")
    return tuple((m.role, m.content) for m in chat.messages)


def _sampling(s: pb.SamplingParams) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=1.0 if s.top_p == 0.0 else s.top_p,
        seed=s.seed if s.HasField("seed") else None,
        ignore_eos=s.ignore_eos,
    )


def _edit(i: int, edit: pb.FeatureEdit) -> FeatureEdit:
    if edit.mode not in MODE_OF:
        raise InvalidRequestError(f"edits[{i}].mode", "set a mode: SET, ADD, SCALE or ABLATE")
    return FeatureEdit(
        edit.sae, edit.feature, MODE_OF[edit.mode], edit.value, edit.only_when_active
    )


def _stop(stop: Sequence[str], limits: StopLimits) -> tuple[str, ...]:
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
    return tuple(stop)


def chunk(token_ids: list[int], text: str) -> pb.GenerateResponse:
    return pb.GenerateResponse(token_ids=token_ids, text=text)


def last_chunk(
    token_ids: list[int],
    text: str,
    reason: FinishReason,
    prompt_tokens: int,
    completion_tokens: int,
    seed: int,
) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        token_ids=token_ids,
        text=text,
        finish_reason=FINISH_OF[reason],
        usage=pb.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens),
        seed=seed,
    )


def limits_message(limits: Limits, stop_limits: StopLimits) -> pb.Limits:
    return pb.Limits(
        max_prompt_tokens=limits.max_prompt_tokens,
        max_new_tokens=limits.max_new_tokens,
        default_max_new_tokens=limits.default_max_new_tokens,
        max_edits_per_request=limits.max_edits_per_request,
        max_abs_edit_value=limits.max_abs_edit_value,
        max_batch_size=limits.max_active_rows,
        max_queued_requests=limits.max_queued_requests,
        max_stop_strings=stop_limits.max_stop_strings,
    )
