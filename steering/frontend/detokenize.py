"""Incremental detokenizing at the edge: text deltas that never split a character or leak a stop.

`TextStream` turns a request's generated token ids into text pieces as they arrive. It holds
back a trailing incomplete UTF-8 sequence (decoded as U+FFFD) and any tail that could be the
start of a stop string; when a stop string appears, the text ends right before it.
Tokenizer-level only: it knows nothing of the engine (the front end tells it to finish).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT = "\ufffd"
CONTEXT_IDS = 4  # ids decoded again before the new ones, so joins between pieces come out right


class TextStream:
    def __init__(
        self, tokenizer: Any, stop: Sequence[str] = (), *, skip_special_tokens: bool = True
    ) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._skip_special = skip_special_tokens
        self._ids: list[int] = []
        self._sent = 0  # characters of the decoded text already returned
        self._settled = 0  # ids whose text is final: they decode to `_settled_text`
        self._settled_text = ""
        self.stopped = False

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return self._stop

    @property
    def text(self) -> str:
        """All text returned so far."""
        return self._decoded()[: self._sent]

    def push(self, token_ids: Sequence[int]) -> str:
        """The new text that is safe to send after `token_ids`; sets `stopped` on a stop string."""
        if self.stopped:
            return ""
        self._ids.extend(token_ids)
        decoded = self._decoded()
        end = self._stop_at(decoded)
        if end is not None:
            self.stopped = True
        else:
            end = self._safe_end(decoded)
        piece = decoded[self._sent : end]
        self._sent = max(self._sent, end)
        return piece

    def flush(self) -> str:
        """The held-back rest, once no more tokens will come (a partial stop string is kept)."""
        if self.stopped:
            return ""
        decoded = self._decoded()
        piece = decoded[self._sent :]
        self._sent = len(decoded)
        return piece

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=self._skip_special))

    def _decoded(self) -> str:
        """The text of all ids, decoding only the unsettled tail (with a few ids of context, as
        tokenizers treat the first id of a sequence specially). Settles text that is complete."""
        start = max(0, self._settled - CONTEXT_IDS)
        context = self._decode(self._ids[start : self._settled])
        tail = self._decode(self._ids[start:])
        text = (
            self._settled_text + tail[len(context) :]
            if tail.startswith(context)
            else self._decode(self._ids)
        )
        if not text.endswith(REPLACEMENT):
            self._settled, self._settled_text = len(self._ids), text
        return text

    def _stop_at(self, decoded: str) -> int | None:
        """Where the earliest stop string starts, if any starts at or after text not yet final."""
        window_start = max(0, self._sent - max((len(s) for s in self._stop), default=0))
        found = [i for s in self._stop if (i := decoded.find(s, window_start)) >= 0]
        return min(found) if found else None

    def _safe_end(self, decoded: str) -> int:
        """How far the text is final: no trailing partial character or possible stop prefix."""
        end = len(decoded)
        while end > self._sent and decoded[end - 1] == REPLACEMENT:
            end -= 1
        for stop in self._stop:
            for k in range(min(len(stop) - 1, end - self._sent), 0, -1):
                if decoded[:end].endswith(stop[:k]):
                    end -= k
                    break
        return max(end, self._sent)
