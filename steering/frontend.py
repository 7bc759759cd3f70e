"""The transport-free front end: text requests in, text chunks out, over the engine's thread.

As vLLM's AsyncLLM over its EngineCore: it owns the engine thread and a tokenizing thread,
validates each request once, renders prompts and chats to token ids (exactly one BOS), streams
incremental text with stop strings, and raises domain errors. Leaving a stream early aborts the
request's row at once. Knows nothing of gRPC or Prometheus: stats leave through a callback.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from steering.detokenize import TextStream
from steering.engine import Engine
from steering.errors import EngineClosedError, InvalidRequestError, RequestFailedError
from steering.hooks import SaeAttachment
from steering.requests import (
    FinishReason,
    GenerationRequest,
    Limits,
    SamplingParams,
    TextRequest,
    validate_text,
)
from steering.stats import AdmittedRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextChunk:
    """New tokens and their text; the last chunk of a request also says how and why it ended."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason | None = None  # set on the last chunk only
    prompt_tokens: int = 0
    completion_tokens: int = 0  # generated so far, in all
    seed: int = 0  # the sampling seed in use


@dataclass(frozen=True)
class ServedModel:
    """What the front end serves, as DescribeModel tells it."""

    name: str
    num_layers: int
    d_model: int
    vocab_size: int
    context_length: int
    chat: bool  # a chat template is loaded
    saes: tuple[SaeAttachment, ...]
    limits: Limits  # as in force


class FrontEnd:
    def __init__(
        self,
        engine: Engine,
        tokenizer: Any,
        *,
        name: str = "model",
        on_admitted: Callable[[AdmittedRequest], None] | None = None,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.name = name
        self.on_admitted = on_admitted
        self.in_flight = 0
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        self._thread = threading.Thread(target=engine.run, name="engine", daemon=True)
        # One thread, so calls into the tokenizer never overlap (fast tokenizers are not safe
        # to reconfigure while in use), and a long prompt never stalls the event loop.
        self._tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="tokenizer")
        # No prompt within the token limit has more characters than this: longer ones are
        # refused before tokenizing them, so work per request stays bounded. (A token covers at
        # most as many characters as its vocabulary entry; the margin covers normalizers.)
        longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
        self.max_prompt_chars = 2 * self.limits.max_prompt_tokens * longest

    @property
    def limits(self) -> Limits:
        """The limits in force: the configured ones, within the model's context."""
        limits = self.engine.config.limits
        longest = min(limits.max_prompt_tokens, self.engine.context_length - 1)
        return replace(limits, max_prompt_tokens=longest)

    def describe(self) -> ServedModel:
        config = self.engine.model.config.get_text_config()
        return ServedModel(
            name=self.name,
            num_layers=int(config.num_hidden_layers),
            d_model=int(config.hidden_size),
            vocab_size=int(config.vocab_size),
            context_length=self.engine.context_length,
            chat=self.chat,
            saes=self.engine.hooks.attachments,
            limits=self.limits,
        )

    @property
    def running(self) -> bool:
        """Whether the engine thread is alive."""
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Take no new requests; those in flight carry on."""
        self.engine.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the engine thread; requests still in it end with EngineClosedError."""
        self.engine.stop()
        self._thread.join(timeout)
        self._tokenizer_thread.shutdown(wait=False)

    async def generate(self, request: TextRequest) -> AsyncGenerator[TextChunk, None]:
        """Stream one request's chunks; raises its domain errors before the first chunk."""
        async for chunk in self._generate(request, report=True):
            yield chunk

    async def warm_up(self) -> None:
        """One short generation through the whole path, before the first user request."""
        request = TextRequest(
            prompt="Hello",
            sampling=SamplingParams(max_new_tokens=2, ignore_eos=True),
            request_id="warm-up",
        )
        start = time.perf_counter()
        async for _ in self._generate(request, report=False):
            pass
        log.info("warm-up generation took %.3f s", time.perf_counter() - start)

    def tokenize(self, request: TextRequest) -> tuple[int, ...]:
        """Prompt ids: the tokenizer's defaults for text, the chat template for a chat; one BOS."""
        if request.prompt is not None:
            return tuple(self.tokenizer(request.prompt).input_ids)
        messages = [{"role": m.role, "content": m.content} for m in request.chat or ()]
        try:
            encoded = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True
            )
        except Exception as exc:  # the template raises for conversations it refuses
            raise InvalidRequestError(
                "chat.messages", f"the chat template refused it: {exc}"
            ) from exc
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return self._one_bos([int(i) for i in ids])

    def _one_bos(self, ids: list[int]) -> tuple[int, ...]:
        """Exactly one leading BOS, whether the template wrote none, one or two."""
        bos = self.tokenizer.bos_token_id
        if bos is None:
            return tuple(ids)
        start = 0
        while start < len(ids) and ids[start] == bos:
            start += 1
        return (bos, *ids[start:])

    def _validate(self, request: TextRequest) -> None:
        validate_text(request, self.limits, self.engine.d_sae_of, chat=self.chat)
        if request.prompt is not None:
            field, chars = "prompt", len(request.prompt)
        else:
            field = "chat.messages"
            chars = sum(len(m.role) + len(m.content) for m in request.chat or ())
        if chars > self.max_prompt_chars:
            raise InvalidRequestError(
                field,
                f"{chars} characters is more than a prompt of "
                f"{self.limits.max_prompt_tokens} tokens can hold",
            )

    async def _generate(
        self, request: TextRequest, *, report: bool
    ) -> AsyncGenerator[TextChunk, None]:
        self._validate(request)
        loop, ready = asyncio.get_running_loop(), asyncio.Event()
        prompt_ids = await loop.run_in_executor(self._tokenizer_thread, self.tokenize, request)
        engine_request = GenerationRequest(
            prompt_ids, request.sampling, request.edits, request.request_id
        )

        def wake() -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(ready.set)

        handle = self.engine.add(engine_request, notify=wake)
        if report and self.on_admitted is not None:
            self.on_admitted(AdmittedRequest(request.request_id, len(prompt_ids), request.edits))
        self.in_flight += 1
        stream, done = TextStream(self.tokenizer, request.sampling.stop), False
        try:
            while not done:
                await ready.wait()
                ready.clear()
                out = handle.channel.take(0)
                if out is None:
                    continue
                was_stopped = stream.stopped
                text = stream.push(out.token_ids)
                if stream.stopped and not was_stopped and not out.finished:
                    self.engine.finish(handle.key, FinishReason.STOP)
                if not out.finished:
                    yield TextChunk(
                        tuple(out.token_ids),
                        text,
                        prompt_tokens=out.prompt_tokens,
                        completion_tokens=out.completion_tokens,
                        seed=out.seed or 0,
                    )
                    continue
                done = True
                reason = FinishReason.STOP if stream.stopped else out.finish_reason
                if reason is FinishReason.ERROR:
                    raise RequestFailedError(out.error or "the request failed")
                if reason is FinishReason.ABORTED:
                    raise EngineClosedError("the server shut down before the request finished")
                assert reason is not None
                yield TextChunk(
                    tuple(out.token_ids),
                    text + stream.flush(),
                    reason,
                    out.prompt_tokens,
                    out.completion_tokens,
                    out.seed or 0,
                )
        finally:
            self.in_flight -= 1
            if not done:
                self.engine.abort(handle.key)  # the caller left: free its row within a step
