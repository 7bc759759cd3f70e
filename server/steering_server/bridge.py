"""The bridge between asyncio handlers and the engine thread.

It owns the engine's thread and a tokenizing thread (a long prompt must not stall the event
loop), and turns a request into an async stream of chunks: new token ids with UTF-8-safe text,
then a last chunk with the finish reason. Leaving the stream early (client cancel, deadline,
server error) aborts the engine row at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from steering.detokenize import TextStream
from steering.engine import Engine
from steering.errors import InvalidRequestError
from steering.requests import FinishReason, GenerationRequest, SamplingParams
from steering_server.convert import ParsedRequest
from steering_server.errors import RequestFailedError, ShuttingDownError
from steering_server.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chunk:
    token_ids: list[int]
    text: str
    finish_reason: FinishReason | None = None  # set on the last chunk only
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seed: int = 0


class Bridge:
    def __init__(self, engine: Engine, tokenizer: Any, metrics: Metrics) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.metrics = metrics
        self.in_flight = 0
        self._thread = threading.Thread(target=engine.run, name="engine", daemon=True)
        # One thread, so calls into the tokenizer never overlap (fast tokenizers are not safe
        # to reconfigure while in use).
        self._tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="tokenizer")
        # No prompt within the token limit has more characters than this: longer ones are
        # refused before tokenizing them, so work per request stays bounded. (A token covers at
        # most as many characters as its vocabulary entry; the margin covers normalizers.)
        longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
        self.max_prompt_chars = 2 * engine.config.limits.max_prompt_tokens * longest

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the engine thread; requests still in it end as aborted."""
        self.engine.stop()
        self._thread.join(timeout)
        self._tokenizer_thread.shutdown(wait=False)

    def tokenize(self, parsed: ParsedRequest) -> tuple[int, ...]:
        """Prompt ids: the tokenizer's defaults for text (one BOS), the chat template for chats."""
        self._check_length(parsed)
        if parsed.prompt is not None:
            return tuple(self.tokenizer(parsed.prompt).input_ids)
        messages = [{"role": role, "content": content} for role, content in parsed.chat or ()]
        try:
            encoded = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True
            )
        except Exception as exc:  # the template raises for conversations it refuses
            raise InvalidRequestError(
                "chat.messages", f"the chat template refused it: {exc}"
            ) from exc
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return tuple(int(i) for i in ids)

    def _check_length(self, parsed: ParsedRequest) -> None:
        if parsed.prompt is not None:
            field, chars = "prompt", len(parsed.prompt)
        else:
            field, chars = "chat.messages", sum(len(r) + len(c) for r, c in parsed.chat or ())
        if chars > self.max_prompt_chars:
            limit = self.engine.config.limits.max_prompt_tokens
            raise InvalidRequestError(
                field, f"{chars} characters is more than a prompt of {limit} tokens can hold"
            )

    async def generate(
        self, parsed: ParsedRequest, *, count: bool = True
    ) -> AsyncGenerator[Chunk, None]:
        """Stream one request's chunks; raises the engine's domain errors before the first.

        `count=False` keeps it out of the metrics (the warm-up).
        """
        loop, ready = asyncio.get_running_loop(), asyncio.Event()
        prompt_ids = await loop.run_in_executor(self._tokenizer_thread, self.tokenize, parsed)
        request = GenerationRequest(prompt_ids, parsed.sampling, parsed.edits, parsed.request_id)

        def wake() -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(ready.set)

        handle = self.engine.add(request, notify=wake)
        if count:
            self.metrics.on_admitted(len(request.prompt_ids), request.edits)
        self.in_flight += 1
        stream, done = TextStream(self.tokenizer, parsed.stop), False
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
                    yield Chunk(out.token_ids, text)
                    continue
                done = True
                reason = FinishReason.STOP if stream.stopped else out.finish_reason
                if reason is FinishReason.ERROR:
                    raise RequestFailedError(out.error or "the request failed")
                if reason is FinishReason.ABORTED:
                    raise ShuttingDownError("the server shut down before the request finished")
                assert reason is not None
                yield Chunk(
                    out.token_ids,
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

    async def warm_up(self) -> None:
        """One short generation through the whole path, before the first user request."""
        parsed = ParsedRequest(
            "Hello", None, SamplingParams(max_new_tokens=2, ignore_eos=True), (), (), "warm-up"
        )
        start = time.perf_counter()
        async for _ in self.generate(parsed, count=False):
            pass
        log.info("warm-up generation took %.3f s", time.perf_counter() - start)
