"""Builds the GenerateRequest proto from a client's arguments, for the sync and async clients.

Checks only the shape the proto cannot express (exactly one of prompt or chat, well-formed chat
messages); values are the server's to validate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from steering_client.edits import Edit
from steering_proto.v1 import steering_pb2 as pb

# One chat message: (role, content), or a mapping with "role" and "content" keys.
ChatMessage = tuple[str, str] | Mapping[str, str]


def build_generate_request(
    prompt: str | None,
    chat: Sequence[ChatMessage] | None,
    edits: Iterable[Edit | pb.FeatureEdit],
    sampling: pb.SamplingParams,
    request_id: str,
) -> pb.GenerateRequest:
    if (prompt is None) == (chat is None):
        raise ValueError("give exactly one of prompt or chat")
    request = pb.GenerateRequest(
        sampling=sampling,
        edits=[e.to_proto() if isinstance(e, Edit) else e for e in edits],
        request_id=request_id,
    )
    if prompt is not None:
        request.prompt = prompt
    elif chat is not None:
        request.chat.SetInParent()  # selects `chat` in the oneof even for an empty list
        request.chat.messages.extend(_chat_message(m) for m in chat)
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
    params = pb.SamplingParams(stop=list(stop))
    for name, value in values.items():
        try:
            setattr(params, name, value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"sampling.{name}: {error}") from None
    return params


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries a bearer token (none without a token)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


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
