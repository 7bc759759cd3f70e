"""Each call of the API, built once for both clients: the caller's arguments (typed options),
the request they make, the stub method that takes it, and how its answer is read.

`SteeringClient` and `AsyncSteeringClient` only run these: one blocking, one on asyncio.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from typing_extensions import TypedDict, Unpack

from steering_client.discovery import (
    Contrast,
    FeatureCard,
    FeatureMatch,
    InspectedToken,
    feature_matches,
    inspected_tokens,
)
from steering_client.dose import Score
from steering_client.request import (
    ChatMessage,
    EditLike,
    FeatureLike,
    RuleLike,
    build_comparison_requests,
    build_contrast_request,
    build_feature_card_request,
    build_generate_request,
    build_inspect_request,
    build_score_request,
    build_search_request,
    comparison_seed,
    sampling_params,
)
from steering_client.responses import ModelDescription
from steering_proto.v1 import steering_pb2 as pb

Answer = TypeVar("Answer")


class GenerateOptions(TypedDict, total=False):
    """`generate`'s keyword arguments (and `generate_text`'s and `compare`'s).

    Zeros mean defaults: temperature 0 is greedy, max_new_tokens 0 the server's default, top_k 0
    and top_p 0 no cut; seed None lets the server pick one. timeout: seconds, None the client's.
    """

    chat: Sequence[ChatMessage] | None
    edits: Iterable[EditLike]
    rules: Iterable[RuleLike]
    preset: str
    watch: Iterable[FeatureLike]
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int | None
    stop: Iterable[str]
    ignore_eos: bool
    top_logprobs: int | None  # set: each token's log-probability and this many most likely
    request_id: str
    timeout: float | None


class InspectOptions(TypedDict, total=False):
    """`inspect`'s keyword arguments: `saes` to read (empty: all), `top_k` per token and SAE (0:
    the server's default), `features` reported at every token, `edits` to steer while reading;
    `no_top` asks for no top lists (only `features`, and no full encode: top_k must stay 0)."""

    chat: Sequence[ChatMessage] | None
    saes: Iterable[str]
    top_k: int
    features: Iterable[FeatureLike]
    edits: Iterable[EditLike]
    no_top: bool
    timeout: float | None


class ContrastOptions(TypedDict, total=False):
    """`contrast`'s keyword arguments: `sae` ("" ranks every SAE together), `top_k` (0: 8)."""

    sae: str
    top_k: int
    timeout: float | None


def checked(options: Any, known: type) -> None:
    """A TypeError for a keyword the call does not take, as a plain signature would raise."""
    unknown = sorted(set(options) - set(known.__annotations__))
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}")


@dataclass(frozen=True)
class Unary(Generic[Answer]):
    """One unary call: the stub's method name, its request, and how its response is read."""

    method: str
    request: Any
    read: Callable[[Any], Answer]
    timeout: float | None  # None: the client's default


def generate_request(
    prompt: str | None, options: GenerateOptions, *, seed: int | None = None
) -> pb.GenerateRequest:
    """The GenerateRequest of `generate`'s arguments; `seed` overrides the options' one."""
    checked(options, GenerateOptions)
    sampling = sampling_params(
        max_new_tokens=options.get("max_new_tokens", 0),
        temperature=options.get("temperature", 0.0),
        top_k=options.get("top_k", 0),
        top_p=options.get("top_p", 0.0),
        seed=options.get("seed") if seed is None else seed,
        stop=options.get("stop", ()),
        ignore_eos=options.get("ignore_eos", False),
        top_logprobs=options.get("top_logprobs"),
    )
    return build_generate_request(
        prompt,
        options.get("chat"),
        options.get("edits", ()),
        sampling,
        options.get("request_id", ""),
        options.get("watch", ()),
        rules=options.get("rules", ()),
        preset=options.get("preset", ""),
    )


def comparison(
    prompt: str | None, options: GenerateOptions
) -> tuple[pb.GenerateRequest, pb.GenerateRequest]:
    """`compare`'s (unsteered, steered) pair, with the one seed both use."""
    seed = comparison_seed(options.get("seed"), options.get("temperature", 0.0))
    return build_comparison_requests(generate_request(prompt, options, seed=seed))


def describe(timeout: float | None) -> Unary[ModelDescription]:
    return Unary("DescribeModel", pb.DescribeModelRequest(), ModelDescription.from_proto, timeout)


def inspect(
    prompt: str | None, **options: Unpack[InspectOptions]
) -> Unary[tuple[InspectedToken, ...]]:
    checked(options, InspectOptions)
    request = build_inspect_request(
        prompt,
        options.get("chat"),
        saes=options.get("saes", ()),
        top_k=options.get("top_k", 0),
        features=options.get("features", ()),
        edits=options.get("edits", ()),
        no_top=options.get("no_top", False),
    )
    return Unary("Inspect", request, inspected_tokens, options.get("timeout"))


def search(
    query: str, sae: str, limit: int, timeout: float | None, by: str = "labels"
) -> Unary[tuple[FeatureMatch, ...]]:
    request = build_search_request(query, sae=sae, limit=limit, by=by)
    return Unary("SearchFeatures", request, feature_matches, timeout)


def contrast(
    a: Iterable[str], b: Iterable[str], **options: Unpack[ContrastOptions]
) -> Unary[Contrast]:
    checked(options, ContrastOptions)
    request = build_contrast_request(
        a, b, sae=options.get("sae", ""), top_k=options.get("top_k", 0)
    )
    return Unary("Contrast", request, Contrast.from_proto, options.get("timeout"))


def describe_feature(
    feature: FeatureLike | str, top_tokens: int, timeout: float | None
) -> Unary[FeatureCard]:
    request = build_feature_card_request(feature, top_tokens=top_tokens)
    return Unary("DescribeFeature", request, FeatureCard.from_proto, timeout)


class ScoreOptions(TypedDict, total=False):
    """`score`'s keyword arguments: `edits` to steer while reading (none: the unsteered model),
    `features` whose activations are reported at every continuation token."""

    edits: Iterable[EditLike]
    features: Iterable[FeatureLike]
    timeout: float | None


class SweepOptions(TypedDict, total=False):
    """`sweep`'s keyword arguments: `mode` ("set", "add" or "scale"), `strengths` (empty: 0,
    0.25, 0.5, 1, 1.5, 2, 4, 8; multiples of the typical maximum where the feature has one),
    `max_new_tokens` (0: the server's default), `only_when_active`."""

    mode: str
    strengths: Iterable[float]
    max_new_tokens: int
    only_when_active: bool
    timeout: float | None


def score(prompt: str, continuation: str, **options: Unpack[ScoreOptions]) -> Unary[Score]:
    checked(options, ScoreOptions)
    request = build_score_request(
        prompt, continuation, options.get("edits", ()), options.get("features", ())
    )
    return Unary("Score", request, Score.from_proto, options.get("timeout"))
