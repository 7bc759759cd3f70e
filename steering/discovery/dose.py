"""Score's and Sweep's results and the pure arithmetic over them: repeated 3-grams, one
strength's point from its scored outputs, and the recommended strength (DESIGN: Dose).

Knows nothing of the engine: the front end scores the texts and hands the numbers here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# The recommendation: a strength whose concept gain is at least this share of the largest...
GAIN_SHARE = 0.5
# ...while its mean log-probability stays within this many nats of strength 0's.
LOGPROB_DROP_NATS = 1.0


@dataclass(frozen=True)
class ScoredToken:
    token_id: int
    text: str
    logprob: float  # natural log, given every token before it
    activations: tuple[float, ...]  # the request's features where the model reads this token


@dataclass(frozen=True)
class ScoredText:
    """A Score's answer: per continuation token, its log-probability and activations."""

    tokens: tuple[ScoredToken, ...]
    prompt_tokens: int  # BOS included

    @property
    def mean_logprob(self) -> float:
        return mean([t.logprob for t in self.tokens])

    @property
    def mean_activations(self) -> tuple[float, ...]:
        """Per feature of the request, its mean over the continuation's tokens."""
        if not self.tokens:
            return ()
        return tuple(
            mean(column) for column in zip(*(t.activations for t in self.tokens), strict=True)
        )


@dataclass(frozen=True)
class SweepRecommendation:
    found: bool
    strength: float = 0.0  # as in the request (when found)
    value: float = 0.0  # in activation units (when found)
    reason: str = ""  # why, in words, also when nothing qualifies


@dataclass(frozen=True)
class SweepPoint:
    """One strength over all prompts: means over the prompts whose output has any token."""

    strength: float  # as in the request
    value: float  # the edit's value in activation units (0: the unsteered baseline)
    concept: float  # the feature's mean activation when the unsteered model reads the output
    logprob: float  # mean log-probability per output token under the unsteered model
    repetition: float  # share of the output's token 3-grams that repeat an earlier one
    texts: tuple[str, ...]  # one per prompt, in request order
    recommendation: SweepRecommendation | None = None  # the last point only


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def repeat_share(tokens: Sequence[int]) -> float:
    """The share of the token 3-grams that repeat an earlier 3-gram of the same sequence (0 for
    fewer than three tokens)."""
    grams = [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]
    seen: set[tuple[int, ...]] = set()
    repeated = 0
    for gram in grams:
        repeated += gram in seen
        seen.add(gram)
    return repeated / len(grams) if grams else 0.0


def sweep_point(
    strength: float,
    value: float,
    texts: Sequence[str],
    outputs: Sequence[Sequence[int]],
    scores: Sequence[ScoredText | None],
) -> SweepPoint:
    """One strength's point from its outputs (token ids, one per prompt) and their unsteered
    scores (None for an empty output, which counts in no mean)."""
    kept = [(ids, s) for ids, s in zip(outputs, scores, strict=True) if s is not None]
    return SweepPoint(
        strength=strength,
        value=value,
        concept=mean([s.mean_activations[0] for _, s in kept]),
        logprob=mean([s.mean_logprob for _, s in kept]),
        repetition=mean([repeat_share(ids) for ids, _ in kept]),
        texts=tuple(texts),
    )


def recommend(points: Sequence[SweepPoint]) -> SweepRecommendation:
    """The smallest strength (by size) whose concept gain over strength 0 is at least half of
    the largest gain, with a mean log-probability at least strength 0's minus 1 nat; none when
    no gain is positive or no strength qualifies. `points` hold strength 0."""
    base = next(p for p in points if p.strength == 0)
    gains = {p.strength: p.concept - base.concept for p in points}
    best = max(gains.values())
    if best <= 0:
        return SweepRecommendation(
            False, reason="no strength raised the feature's activation above strength 0's"
        )
    floor = base.logprob - LOGPROB_DROP_NATS
    qualified = [
        p
        for p in points
        if p.strength != 0 and gains[p.strength] >= GAIN_SHARE * best and p.logprob >= floor
    ]
    if not qualified:
        return SweepRecommendation(
            False,
            reason=(
                f"every strength reaching half of the largest concept gain ({best:.3g}) drops the "
                f"mean log-probability below strength 0's minus {LOGPROB_DROP_NATS:g} nat "
                f"({floor:.3f})"
            ),
        )
    chosen = min(qualified, key=lambda p: (abs(p.strength), p.strength))
    return SweepRecommendation(
        True,
        chosen.strength,
        chosen.value,
        reason=(
            f"the smallest strength with at least half of the largest concept gain "
            f"({gains[chosen.strength]:.3g} of {best:.3g}) and a mean log-probability of "
            f"{chosen.logprob:.3f}, within {LOGPROB_DROP_NATS:g} nat of strength 0's "
            f"({base.logprob:.3f})"
        ),
    )
