"""Per-row sampling: greedy, temperature, top-k and top-p, each row with its own generator.

No global RNG: a request's draws depend only on its seed and its own logits.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

from steering.requests import SamplingParams


@dataclass(eq=False)
class RowSampler:
    params: SamplingParams
    seed: int  # the seed in use: the request's, or a fresh one to report back
    generator: torch.Generator

    @classmethod
    def create(cls, params: SamplingParams, device: torch.device) -> RowSampler:
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        return cls(params, seed, torch.Generator(device=device).manual_seed(seed))

    @property
    def greedy(self) -> bool:
        return self.params.temperature == 0.0

    def draw(self, logits: torch.Tensor) -> int:
        """One token from (V,) logits."""
        return int(self.sample(logits))

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """One token from (V,) logits, as a (1,) tensor on their device: sampled without a
        device sync, so the step's one copy to the host carries it."""
        scores = logits.float() / self.params.temperature
        k = self.params.top_k
        if 0 < k < scores.shape[-1]:
            kth = torch.topk(scores, k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if 0.0 < self.params.top_p < 1.0:
            scores = _top_p(scores, self.params.top_p)
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator)


def _top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches top_p (at least one)."""
    sorted_scores, order = torch.sort(scores, descending=True)
    probs = torch.softmax(sorted_scores, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # mass of the tokens ranked above each one
    drop = before >= top_p
    return scores.masked_fill(drop.scatter(0, order, drop), float("-inf"))
