"""Generation requests as the engine takes them: frozen inputs, their limits and validation.

Token ids only: tokenizing and detokenizing happen at the edge.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass

from steering.edits import DEFAULT_MAX_ABS_VALUE, FeatureEdit, validate_edits
from steering.errors import InvalidRequestError

# Below this, logits / temperature overflows float32 for ordinary logits (1e-45 turns 1.0 into
# inf and the draw into NaN); sampling so cold is greedy in all but exact ties: ask for 0.
MIN_TEMPERATURE = 1e-3
MAX_TEMPERATURE = 100.0


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 0  # 0: the engine's default
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1 (or 0): off
    seed: int | None = None  # None: a fresh random seed, reported back
    ignore_eos: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams = SamplingParams()
    edits: tuple[FeatureEdit, ...] = ()
    request_id: str = ""  # the caller's label, for logs; the engine keys requests itself


class FinishReason(enum.Enum):
    LENGTH = "length"  # max_new_tokens or the model's context length
    EOS = "eos"  # an end-of-sequence token
    STOP = "stop"  # a stop string, found at the edge (see `Engine.finish`)
    ABORTED = "aborted"  # the caller went away
    ERROR = "error"  # this request failed inside the engine


@dataclass(frozen=True)
class Limits:
    """What the engine accepts; served to clients by DescribeModel."""

    max_prompt_tokens: int = 4096
    max_new_tokens: int = 1024
    default_max_new_tokens: int = 64
    max_edits_per_request: int = 64
    max_abs_edit_value: float = DEFAULT_MAX_ABS_VALUE
    max_active_rows: int = 16
    max_queued_requests: int = 64


def validate_request(
    request: GenerationRequest, limits: Limits, d_sae_of: Mapping[str, int]
) -> None:
    """Raise InvalidRequestError naming the field if `request` breaks a limit."""
    n_prompt = len(request.prompt_ids)
    if n_prompt == 0:
        raise InvalidRequestError("prompt", "the prompt is empty")
    if n_prompt > limits.max_prompt_tokens:
        raise InvalidRequestError(
            "prompt",
            f"the prompt has {n_prompt} tokens, more than the limit of {limits.max_prompt_tokens}",
        )
    _validate_sampling(request.sampling, limits)
    if len(request.edits) > limits.max_edits_per_request:
        raise InvalidRequestError(
            "edits",
            f"{len(request.edits)} edits, more than the limit of {limits.max_edits_per_request}",
        )
    validate_edits(request.edits, d_sae_of, max_abs_value=limits.max_abs_edit_value)


def _validate_sampling(s: SamplingParams, limits: Limits) -> None:
    if not 0 <= s.max_new_tokens <= limits.max_new_tokens:
        raise InvalidRequestError(
            "sampling.max_new_tokens",
            f"must be between 0 and {limits.max_new_tokens}, got {s.max_new_tokens}",
        )
    t = s.temperature
    if not (math.isfinite(t) and (t == 0.0 or MIN_TEMPERATURE <= t <= MAX_TEMPERATURE)):
        raise InvalidRequestError(
            "sampling.temperature",
            f"must be 0 (greedy) or between {MIN_TEMPERATURE:g} and {MAX_TEMPERATURE:g}, got {t}",
        )
    if s.top_k < 0:
        raise InvalidRequestError("sampling.top_k", f"must not be negative, got {s.top_k}")
    if not 0.0 <= s.top_p <= 1.0:  # also false for NaN
        raise InvalidRequestError("sampling.top_p", f"must be between 0 and 1, got {s.top_p}")
    if s.seed is not None and not 0 <= s.seed < 2**64:
        raise InvalidRequestError("sampling.seed", f"must be between 0 and 2**64 - 1, got {s.seed}")
