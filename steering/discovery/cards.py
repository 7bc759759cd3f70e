"""Feature cards: what a researcher reads before steering one feature.

A card joins what the label file says (label, typical maximum, frequency, top contexts) with the
tokens the feature's decoder direction promotes and suppresses through the unembedding: the top
and bottom of `W_dec[i] · W_U`, as Neuronpedia's logit tables (no final norm, no softcap: Gemma
2's logit softcap is monotonic and leaves the ranking as it is). Knows no engine and no server.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Vocabulary rows converted to float32 at a time: a bfloat16 unembedding is never copied whole
# (Gemma's 256k × 4608 would be 4.7 GB in float32).
CHUNK_ROWS = 16384


@dataclass(frozen=True)
class TokenWeight:
    """A vocabulary token and its weight (for a card: W_dec[i] · W_U of the token)."""

    token_id: int
    text: str  # the token decoded alone
    weight: float


@dataclass(frozen=True)
class FeatureCard:
    """One feature described; label, typical maximum, frequency and contexts empty (0) when
    unknown. `promoted`: largest weight first; `suppressed`: smallest first."""

    sae: str
    feature: int
    label: str
    typical_max: float
    frequency: float
    top_contexts: tuple[str, ...]
    promoted: tuple[TokenWeight, ...]
    suppressed: tuple[TokenWeight, ...]


@dataclass(frozen=True)
class TokenEffects:
    """The ids and weights of the most promoted (largest first) and most suppressed (smallest
    first) tokens; host-side lists."""

    promoted: list[tuple[int, float]]
    suppressed: list[tuple[int, float]]


def logit_weights(direction: torch.Tensor, unembedding: torch.Tensor) -> torch.Tensor:
    """`direction · W_U` for every vocabulary token, in float32 on the unembedding's device.

    direction: (d_model,); unembedding: (vocab, d_model), the model's output embeddings (Gemma
    ties them to the input embeddings). Returns (vocab,).
    """
    d = direction.to(device=unembedding.device, dtype=torch.float32)
    if unembedding.dtype == torch.float32:
        return unembedding @ d
    parts = [
        unembedding[start : start + CHUNK_ROWS].float() @ d
        for start in range(0, unembedding.shape[0], CHUNK_ROWS)
    ]
    return torch.cat(parts)


def token_effects(
    direction: torch.Tensor, unembedding: torch.Tensor, k: int, vocab_size: int | None = None
) -> TokenEffects:
    """The `k` most promoted and most suppressed tokens of a decoder direction (ties: lower
    id). `vocab_size`: only ids below it are ranked (an unembedding padded past the tokenizer's
    vocabulary has rows no text can hold)."""
    weights = logit_weights(direction, unembedding)  # (vocab,)
    if vocab_size is not None:
        weights = weights[:vocab_size]
    k = min(k, weights.numel())
    return TokenEffects(_ranked(weights, k), _ranked(-weights, k, sign=-1.0))


def _ranked(scores: torch.Tensor, k: int, sign: float = 1.0) -> list[tuple[int, float]]:
    """The (id, sign · score) of the k largest scores, largest first, ties to the lower id."""
    if k == 0:
        return []
    values, ids = torch.topk(scores, k)
    pairs = sorted(zip(values.tolist(), ids.tolist(), strict=True), key=lambda p: (-p[0], p[1]))
    return [(int(i), sign * float(v)) for v, i in pairs]
