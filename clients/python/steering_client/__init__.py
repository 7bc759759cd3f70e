"""Light Python client of the steering server (grpcio + protobuf only) and its CLI.

from steering_client import Edit, SteeringClient

with SteeringClient("localhost:50051") as client:
    for chunk in client.generate("The sea is", edits=[Edit.set("res12", 1234, 8.0)]):
        print(chunk.text, end="")
"""

from steering_client.client import DEFAULT_TARGET, AsyncSteeringClient, SteeringClient
from steering_client.discovery import (
    Contrast,
    FeatureActivation,
    FeatureCard,
    FeatureContrast,
    FeatureMatch,
    InspectedToken,
    TokenWeight,
)
from steering_client.dose import Score, ScoredToken, Sweep, SweepPoint, SweepRecommendation
from steering_client.edits import Edit, FeatureRef, parse_edit, parse_feature_ref
from steering_client.errors import SteeringClientError
from steering_client.responses import (
    Chunk,
    Comparison,
    Completion,
    EditReceipt,
    Limits,
    ModelDescription,
    ModelInfo,
    Preset,
    SaeInfo,
    TokenLogprob,
    TokenLogprobs,
    Usage,
)
from steering_client.rules import Rule, parse_rule

__all__ = [
    "DEFAULT_TARGET",
    "AsyncSteeringClient",
    "Chunk",
    "Comparison",
    "Completion",
    "Contrast",
    "Edit",
    "EditReceipt",
    "FeatureActivation",
    "FeatureCard",
    "FeatureContrast",
    "FeatureMatch",
    "FeatureRef",
    "InspectedToken",
    "Limits",
    "ModelDescription",
    "ModelInfo",
    "Preset",
    "Rule",
    "SaeInfo",
    "Score",
    "ScoredToken",
    "SteeringClient",
    "SteeringClientError",
    "Sweep",
    "SweepPoint",
    "SweepRecommendation",
    "TokenLogprob",
    "TokenLogprobs",
    "TokenWeight",
    "Usage",
    "parse_edit",
    "parse_feature_ref",
    "parse_rule",
]
