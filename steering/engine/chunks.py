"""Where a prompt's prefill chunks end, so that no step's prefill costs more than the budget.

A chunk of `t` prompt tokens after `s` already in the slot runs every token through each layer's
weights (cost proportional to t) and attends over the keys its slot holds plus its own (t·(k +
t), where k is s in a full attention layer and at most the window in a sliding one, whose ring
keeps no more; see steering.engine.slot_cache). At a fixed token count a late chunk of a long
prompt costs more than an early one, so the budget is counted in cost: `prefill_tokens_per_step`
tokens at the start of a prompt is what one step may spend, and a chunk deeper in a prompt
holds fewer tokens.

In multiply-adds per layer, a token through the weights costs P (the attention projections and
the gated MLP) and attending over one key costs 2·H·d (scores and values over H heads of width
d); so with K = P / (2·H·d), the keys that cost as much as the weights, a chunk costs
Σ_layers t·(K + k_layer + t) in units of one key's attention. The rule uses integers of the
model's configuration only, so where a prompt's chunks end depends on the prompt alone, whatever
shares the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from steering.engine.slot_cache import SLIDING


@dataclass(frozen=True)
class ChunkCosts:
    budget: int  # tokens at the start of a prompt that one step may compute
    keys: int  # K: the attention keys per token that cost as much as one token's weights
    windows: tuple[int | None, ...]  # per layer, the most earlier keys it holds (None: all)

    @classmethod
    def for_model(cls, config: Any, budget: int) -> ChunkCosts:
        """The costs of a Hugging Face model `config` (its text config) under `budget`."""
        text = config.get_text_config()
        d_model, heads = int(text.hidden_size), int(text.num_attention_heads)
        width = int(getattr(text, "head_dim", None) or d_model // heads)
        kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
        weights = (
            d_model * width * (2 * heads + 2 * kv_heads) + 3 * d_model * text.intermediate_size
        )
        n_layers = int(text.num_hidden_layers)
        types = tuple(getattr(text, "layer_types", None) or ())[:n_layers]
        window = getattr(text, "sliding_window", None)
        windows = tuple(
            int(window) if window and i < len(types) and types[i] == SLIDING else None
            for i in range(n_layers)
        )
        return cls(budget, max(1, weights // (2 * heads * width)), windows)

    def cost(self, tokens: int, start: int) -> int:
        """A chunk of `tokens` after `start` positions, in units of one key's attention."""
        held = sum(start if w is None else min(start, w) for w in self.windows)
        return tokens * (len(self.windows) * (self.keys + tokens) + held)

    @property
    def per_step(self) -> int:
        """What one step may spend: a chunk of the budget's size at a prompt's start."""
        return self.cost(self.budget, 0)

    def chunk(self, start: int, remaining: int) -> int:
        """The next chunk's size for a prompt with `start` positions done and `remaining` to go:
        the most tokens costing at most `per_step` (at least one, at most `remaining`)."""
        low, high = 1, min(self.budget, remaining)  # cost grows with tokens: bisect
        while low < high:
            mid = (low + high + 1) // 2
            if self.cost(mid, start) <= self.per_step:
                low = mid
            else:
                high = mid - 1
        return low

    def bounds(self, length: int) -> list[int]:
        """The chunk sizes of a `length`-token prompt, in order."""
        sizes, done = [], 0
        while done < length:
            sizes.append(self.chunk(done, length - done))
            done += sizes[-1]
        return sizes
