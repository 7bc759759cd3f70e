"""A request's output channel: one slot that merges, so the engine never blocks on a reader.

The engine thread `push`es each step's new tokens; a reader `take`s everything pending at once.
A slow reader finds several steps' tokens merged, never a growing queue (at most
max_new_tokens ids wait). `notify` lets the asyncio front end wake up without polling.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from steering.engine.logprobs import Logprobs
from steering.requests import FinishReason, Receipt
from steering.steer.plan import RowResult

log = logging.getLogger(__name__)


@dataclass
class RequestOutput:
    token_ids: list[int] = field(default_factory=list)  # new since the last take
    watched: list[tuple[float, ...]] = field(default_factory=list)  # one per token, if watching
    finish_reason: FinishReason | None = None  # set once, on the last output
    error: str | None = None  # with FinishReason.ERROR: what went wrong, safe to show a client
    prompt_tokens: int = 0
    completion_tokens: int = 0  # generated so far, in all
    seed: int | None = None  # the sampling seed in use
    receipts: tuple[Receipt, ...] = ()  # on the last output: what each edit did
    readings: RowResult | None = None  # on the last output of a prefill-only request
    logprobs: list[Logprobs] = field(default_factory=list)  # one per token, if asked for

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class OutputChannel:
    def __init__(self, notify: Callable[[], None] | None = None) -> None:
        self._notify = notify
        self._cond = threading.Condition()
        self._pending: RequestOutput | None = None
        self._closed = False  # a finished output was pushed

    def push(
        self,
        token_ids: list[int],
        *,
        completion_tokens: int,
        prompt_tokens: int,
        seed: int,
        finish_reason: FinishReason | None = None,
        error: str | None = None,
        watched: list[tuple[float, ...]] | None = None,
        receipts: tuple[Receipt, ...] = (),
        readings: RowResult | None = None,
        logprobs: list[Logprobs] | None = None,
    ) -> None:
        """Merge new tokens (and a finish, once) into the slot; never blocks on the reader."""
        with self._cond:
            if self._closed:
                return
            pending = self._pending or RequestOutput()
            pending.token_ids.extend(token_ids)
            pending.watched.extend(watched or ())
            pending.logprobs.extend(logprobs or ())
            pending.prompt_tokens, pending.completion_tokens, pending.seed = (
                prompt_tokens,
                completion_tokens,
                seed,
            )
            if finish_reason is not None:
                pending.finish_reason, pending.error = finish_reason, error
                pending.receipts, pending.readings = receipts, readings
                self._closed = True
            self._pending = pending
            self._cond.notify_all()
        if self._notify is not None:
            try:
                self._notify()
            except Exception:  # a reader's wake-up must never break the engine thread
                log.exception("output channel notify failed")

    def take(self, timeout: float | None = None) -> RequestOutput | None:
        """Everything pending, waiting up to `timeout` seconds; None if nothing came."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending is not None, timeout)
            out, self._pending = self._pending, None
            return out

    @property
    def closed(self) -> bool:
        """True once the request's last output was pushed (it may still be waiting to be taken)."""
        with self._cond:
            return self._closed
