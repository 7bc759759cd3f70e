"""Plain statistics the engine produces for a metrics layer to consume (no Prometheus here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from steering.edits import FeatureEdit
from steering.requests import FinishReason


@dataclass(frozen=True)
class AdmittedRequest:
    """A request the engine took (from the front end)."""

    request_id: str
    prompt_tokens: int
    edits: tuple[FeatureEdit, ...]
    kind: str = "generate"  # or "inspect", "contrast" (one per text), "search", "score", "sweep"
    watched: int = 0  # features watched


@dataclass(frozen=True)
class FinishedRequest:
    """One request's life, in seconds on the monotonic clock (None: never happened)."""

    request_id: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    queued_at: float
    admitted_at: float | None
    first_token_at: float | None
    finished_at: float


@dataclass(frozen=True)
class StepStats:
    """One engine step."""

    seconds: float  # wall time of the whole step
    batch_size: int  # rows in the decode forward (0: none ran)
    prefill_requests: int
    prefill_tokens: int
    generated_tokens: int  # new tokens over all rows, prefill's first tokens included
    steered_rows: int  # rows of the decode forward that carried edits
    hook_seconds: float  # host time inside steering hooks (on GPU: launch time, not kernel time)
    finished: tuple[FinishedRequest, ...]
    rules_fired: dict[str, int] = field(default_factory=dict)  # by action: apply, stop


@dataclass(frozen=True)
class EngineSnapshot:
    """The engine's state at one moment."""

    waiting: int
    running: int
    steps: int
    cuda_graphs: bool = False  # decode replays CUDA graphs (requested, and none failed its check)
