"""A model that stands in for Gemma in engine logic tests: same call signature, no weights.

It stores each fed token id as its 'key' in the cache (one layer, one head of width 1), and
predicts `(sum of the ids its last position attends to + position + 1) % vocab`, so any
misalignment of cache slots, attention masks or positions when rows join and leave changes its
output.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache

VOCAB = 50


class MockModel(nn.Module):
    def __init__(self, context_length: int = 512, vocab: int = VOCAB) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 1)
        self.layers = nn.ModuleList()
        self.vocab = vocab
        text = SimpleNamespace(
            max_position_embeddings=context_length,
            hidden_size=1,
            num_hidden_layers=1,
            num_attention_heads=1,
            num_key_value_heads=1,
            head_dim=1,
            intermediate_size=4,
            layer_types=["full_attention"],
        )
        self.config = SimpleNamespace(get_text_config=lambda: text)
        self.generation_config = SimpleNamespace(eos_token_id=[1])
        self.forwards = 0
        # Per forward: (rows, tokens per row, whether it was a decode step over the slots).
        self.fed: list[tuple[int, int, bool]] = []
        self.prefills: list[tuple[int, int]] = []  # per prefill forward: (first position, tokens)
        self.fail_next = 0  # raise in this many coming forwards

    def get_decoder(self) -> nn.Module:
        return self

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: dict[str, torch.Tensor],  # per layer type, (B, 1, T, L) bool
        position_ids: torch.Tensor,
        cache: Cache,
        **_: Any,
    ) -> SimpleNamespace:
        self.forwards += 1
        decode = getattr(cache, "_read", None) is not None
        self.fed.append((int(input_ids.shape[0]), int(input_ids.shape[1]), decode))
        if not decode:
            self.prefills.append((int(position_ids[0, 0]), int(input_ids.shape[1])))
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("injected failure")
        keys = input_ids[:, None, :, None].float()  # (B, 1, T, 1)
        all_keys, _ = cache.update(keys, keys, 0)
        mask = attention_mask["full_attention"]
        assert all_keys.shape[2] == mask.shape[-1], "cache and mask disagree"
        total = (all_keys[:, 0, :, 0] * mask[:, 0, -1, :]).sum(dim=1)  # (B,)
        nxt = (total + position_ids[:, -1] + 1).long() % self.vocab
        logits = torch.full((input_ids.shape[0], 1, self.vocab), -1.0)
        logits[torch.arange(input_ids.shape[0]), 0, nxt] = 1.0
        return SimpleNamespace(logits=logits, cache=cache)


def mock_reference(
    prompt: list[int], n: int, vocab: int = VOCAB, eos: int | None = None
) -> list[int]:
    """What the mock generates for `prompt` alone."""
    seq, out = list(prompt), []
    for _ in range(n):
        token = (sum(seq) + len(seq) - 1 + 1) % vocab
        out.append(token)
        seq.append(token)
        if token == eos:
            break
    return out
