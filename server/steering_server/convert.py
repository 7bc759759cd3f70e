"""Proto <-> domain, in one place: requests in, chunks and descriptions out.

Checks only what the wire format says and the domain cannot (an unset oneof, an unset enum);
every other rule is the core's (`steering.requests`), applied by the front end.
"""

from __future__ import annotations

from steering.edits import EditMode, FeatureEdit
from steering.errors import InvalidRequestError
from steering.frontend import ServedModel, TextChunk
from steering.requests import ChatMessage, FinishReason, Limits, SamplingParams, TextRequest
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


def text_request(request: pb.GenerateRequest, request_id: str) -> TextRequest:
    """The call as a domain request; `request_id` is the caller's, or one the server assigned."""
    which = request.WhichOneof("input")
    if which is None:
        raise InvalidRequestError("input", "set either prompt or chat")
    chat = None
    if which == "chat":
        chat = tuple(ChatMessage(m.role, m.content) for m in request.chat.messages)
    return TextRequest(
        prompt=request.prompt if which == "prompt" else None,
        chat=chat,
        sampling=_sampling(request.sampling),
        edits=tuple(_edit(i, e) for i, e in enumerate(request.edits)),
        request_id=request_id,
    )


def _sampling(s: pb.SamplingParams) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p,
        seed=s.seed if s.HasField("seed") else None,
        ignore_eos=s.ignore_eos,
        stop=tuple(s.stop),
    )


def _edit(i: int, edit: pb.FeatureEdit) -> FeatureEdit:
    if edit.mode not in MODE_OF:
        raise InvalidRequestError(f"edits[{i}].mode", "set a mode: SET, ADD, SCALE or ABLATE")
    return FeatureEdit(
        edit.sae, edit.feature, MODE_OF[edit.mode], edit.value, edit.only_when_active
    )


def response(chunk: TextChunk) -> pb.GenerateResponse:
    """One chunk of the stream; the last one carries the finish reason, usage and seed."""
    if chunk.finish_reason is None:
        return pb.GenerateResponse(token_ids=chunk.token_ids, text=chunk.text)
    return pb.GenerateResponse(
        token_ids=chunk.token_ids,
        text=chunk.text,
        finish_reason=FINISH_OF[chunk.finish_reason],
        usage=pb.Usage(
            prompt_tokens=chunk.prompt_tokens, completion_tokens=chunk.completion_tokens
        ),
        seed=chunk.seed,
    )


def limits_message(limits: Limits) -> pb.Limits:
    return pb.Limits(
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
        ),
        saes=[
            pb.SaeInfo(
                name=a.name, layer=a.layer, d_sae=a.sae.d_sae, d_model=a.sae.d_model, site=a.site
            )
            for a in served.saes
        ],
        limits=limits_message(served.limits),
    )
