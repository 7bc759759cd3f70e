"""What Inspect, SearchFeatures, Contrast and DescribeFeature answer, as frozen dataclasses read
from the protos.

An activation is a feature's f as its SAE encodes the output of its layer before the SAE's own
edits (edits at earlier layers are already in it); special tokens carry none (0). A label is
empty when the feature has none.
"""

from __future__ import annotations

from dataclasses import dataclass

from steering_client.responses import from_message
from steering_proto.v1 import steering_pb2 as pb


@dataclass(frozen=True)
class FeatureActivation:
    """A feature's activation at one position, its label, and its typical maximum activation
    (0 when unknown)."""

    sae: str
    feature: int
    activation: float
    label: str
    typical_max: float = 0.0


@dataclass(frozen=True)
class InspectedToken:
    """One input token and what the SAEs read there.

    `top`: per SAE (in DescribeModel's order) the most active features, largest first.
    `features`: the features the request named, in its order (0 at special tokens).
    """

    token_id: int
    text: str  # the token decoded alone
    special: bool  # BOS, turn markers: never steered, no activations
    top: tuple[FeatureActivation, ...]
    features: tuple[FeatureActivation, ...]

    @classmethod
    def from_proto(cls, msg: pb.InspectedToken) -> InspectedToken:
        return cls(
            token_id=msg.token_id,
            text=msg.text,
            special=msg.special,
            top=tuple(from_message(FeatureActivation, a) for a in msg.top),
            features=tuple(from_message(FeatureActivation, a) for a in msg.features),
        )


@dataclass(frozen=True)
class FeatureMatch:
    """A labelled feature that matches a search; a higher score is better (within one search).
    `typical_max` (the feature's typical maximum activation) and `frequency` (the share of
    positions where it fires) are 0 when unknown."""

    sae: str
    feature: int
    label: str
    score: float
    typical_max: float = 0.0
    frequency: float = 0.0
    found_by: str = ""  # "labels" or "activation"; "" from a server that does not say


@dataclass(frozen=True)
class FeatureContrast:
    """A feature's mean activation over each set of texts."""

    sae: str
    feature: int
    mean_a: float
    mean_b: float
    label: str


@dataclass(frozen=True)
class Contrast:
    """The features that most separate two sets of texts.

    `toward_a`: largest mean_a - mean_b > 0 first; `toward_b`: most negative first.
    """

    toward_a: tuple[FeatureContrast, ...]
    toward_b: tuple[FeatureContrast, ...]

    @classmethod
    def from_proto(cls, msg: pb.ContrastResponse) -> Contrast:
        return cls(
            toward_a=tuple(from_message(FeatureContrast, c) for c in msg.toward_a),
            toward_b=tuple(from_message(FeatureContrast, c) for c in msg.toward_b),
        )


def inspected_tokens(msg: pb.InspectResponse) -> tuple[InspectedToken, ...]:
    """Every input token of an InspectResponse, in order."""
    return tuple(InspectedToken.from_proto(token) for token in msg.tokens)


def feature_matches(msg: pb.SearchFeaturesResponse) -> tuple[FeatureMatch, ...]:
    """A search's matches, best first."""
    return tuple(from_message(FeatureMatch, match) for match in msg.matches)


@dataclass(frozen=True)
class TokenWeight:
    """A vocabulary token and its weight (for a card: W_dec[i] · W_U of the token)."""

    token_id: int
    text: str  # the token decoded alone
    weight: float


@dataclass(frozen=True)
class FeatureCard:
    """What a researcher reads before steering one feature: its label, typical maximum
    activation and firing frequency (0 when unknown), top contexts (the token marked
    [[like this]]; empty when unknown), and the tokens its decoder direction promotes (largest
    W_dec[i] · W_U first) and suppresses (smallest first) through the unembedding."""

    sae: str
    feature: int
    label: str
    typical_max: float
    frequency: float
    top_contexts: tuple[str, ...]
    promoted: tuple[TokenWeight, ...]
    suppressed: tuple[TokenWeight, ...]

    @classmethod
    def from_proto(cls, msg: pb.FeatureCard) -> FeatureCard:
        return cls(
            sae=msg.sae,
            feature=msg.feature,
            label=msg.label,
            typical_max=msg.typical_max,
            frequency=msg.frequency,
            top_contexts=tuple(msg.top_contexts),
            promoted=tuple(from_message(TokenWeight, t) for t in msg.promoted),
            suppressed=tuple(from_message(TokenWeight, t) for t in msg.suppressed),
        )
