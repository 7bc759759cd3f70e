"""Generated tokens' log-probabilities as callers read them: the engine's ids and values with
each token's text (decoded alone)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from steering.engine.logprobs import Logprobs


@dataclass(frozen=True)
class TopLogprob:
    """One of the most likely tokens at a position."""

    token_id: int
    text: str  # decoded alone
    logprob: float


@dataclass(frozen=True)
class TokenLogprobs:
    """A generated token, its log-probability, and the most likely tokens at its position
    (most likely first; ties: lower id first)."""

    token_id: int
    text: str  # decoded alone
    logprob: float
    top: tuple[TopLogprob, ...] = ()


def with_texts(
    token_ids: Sequence[int],
    scored: Sequence[Logprobs],
    decode: Callable[[Sequence[int]], list[str]],
) -> tuple[TokenLogprobs, ...]:
    """The engine's Logprobs of `token_ids` with texts; `decode` decodes each id alone."""
    ids = list(token_ids)
    for logprobs in scored:
        ids += [token for token, _ in logprobs.top]
    unique = list(dict.fromkeys(ids))
    texts = dict(zip(unique, decode(unique), strict=True))
    return tuple(
        TokenLogprobs(
            token,
            texts[token],
            logprobs.logprob,
            tuple(TopLogprob(t, texts[t], value) for t, value in logprobs.top),
        )
        for token, logprobs in zip(token_ids, scored, strict=True)
    )
