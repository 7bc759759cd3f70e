"""What Score and Sweep answer, as frozen dataclasses read from the protos; their requests; and
how the CLI shows them (a per-token table, a per-strength table with the recommendation).

Log-probabilities are natural logs under the model as it read the text (Score: with the
request's edits; Sweep: unsteered). Activations are read before the feature's own SAE edits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from steering_client.edits import FeatureRef
from steering_client.responses import from_message
from steering_proto.v1 import steering_pb2 as pb


@dataclass(frozen=True)
class ScoredToken:
    token_id: int
    text: str  # the token decoded alone
    logprob: float  # given every token before it
    activations: tuple[float, ...]  # the requested features at this token, in order


@dataclass(frozen=True)
class Score:
    """Per continuation token, its log-probability and the requested features' activations."""

    tokens: tuple[ScoredToken, ...]
    mean_logprob: float
    mean_activations: tuple[float, ...]  # per requested feature, over the continuation
    prompt_tokens: int  # BOS included

    @classmethod
    def from_proto(cls, msg: pb.ScoreResponse) -> Score:
        return cls(
            tokens=tuple(
                ScoredToken(t.token_id, t.text, t.logprob, tuple(t.activations)) for t in msg.tokens
            ),
            mean_logprob=msg.mean_logprob,
            mean_activations=tuple(msg.mean_activations),
            prompt_tokens=msg.prompt_tokens,
        )


@dataclass(frozen=True)
class SweepRecommendation:
    """The smallest strength reaching half of the largest concept gain over strength 0 while
    the mean log-probability stays within 1 nat of strength 0's; `found` False: none did."""

    found: bool
    strength: float
    value: float
    reason: str


@dataclass(frozen=True)
class SweepPoint:
    """One strength over all prompts: concept (the feature's mean activation when the
    unsteered model reads the outputs), logprob (mean per output token, unsteered), repetition
    (share of repeated token 3-grams), and the outputs in prompt order."""

    strength: float
    value: float  # the edit's value in activation units
    concept: float
    logprob: float
    repetition: float
    texts: tuple[str, ...]

    @classmethod
    def from_proto(cls, msg: pb.SweepPoint) -> SweepPoint:
        return cls(
            msg.strength, msg.value, msg.concept, msg.logprob, msg.repetition, tuple(msg.texts)
        )


@dataclass(frozen=True)
class Sweep:
    points: tuple[SweepPoint, ...]  # in the request's order (strength 0 first if not asked)
    recommendation: SweepRecommendation

    @classmethod
    def from_protos(cls, messages: Iterable[pb.SweepPoint]) -> Sweep:
        messages = list(messages)
        last = messages[-1].recommendation if messages else pb.SweepRecommendation()
        return cls(
            tuple(SweepPoint.from_proto(m) for m in messages),
            from_message(SweepRecommendation, last),
        )


def format_score(score: Score, features: Iterable[FeatureRef]) -> str:
    """One line per continuation token: its text, log-probability and the features' values."""
    names = [f"{f.sae}:{f.feature}" for f in features]
    header = ["token", "logprob", *names]
    rows = [
        [repr(t.text), f"{t.logprob:.3f}", *(f"{a:.3f}" for a in t.activations)]
        for t in score.tokens
    ]
    rows.append(
        ["mean", f"{score.mean_logprob:.3f}", *(f"{a:.3f}" for a in score.mean_activations)]
    )
    return _table(header, rows)


def format_sweep(sweep: Sweep, snippet: int = 60) -> str:
    """A row per strength (strength, value, concept, logprob, repetition, the first prompt's
    text cut to `snippet` characters), then the recommendation."""
    header = ["strength", "value", "concept", "logprob", "repetition", "text (first prompt)"]
    rows = []
    for p in sweep.points:
        text = " ".join((p.texts[0] if p.texts else "").split())
        text = text if len(text) <= snippet else text[: snippet - 1] + "…"
        mark = (
            " *"
            if sweep.recommendation.found and p.strength == sweep.recommendation.strength
            else ""
        )
        rows.append(
            [
                f"{p.strength:g}{mark}",
                f"{p.value:.4g}",
                f"{p.concept:.3f}",
                f"{p.logprob:.3f}",
                f"{p.repetition:.2f}",
                repr(text),
            ]
        )
    r = sweep.recommendation
    said = (
        f"recommended: strength {r.strength:g} (value {r.value:.4g}): {r.reason}"
        if r.found
        else f"no recommended strength: {r.reason}"
    )
    return _table(header, rows) + "\n" + said


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )
