"""The running batch: its rows' KV cache, attention mask and positions, and the model forward.

A small contract in the manner of TGI: `prefill` makes a batch from prompts (one left-padded
forward), `concatenate` joins batches (left-padding the shorter KV), `filter` keeps some rows and
drops padding no row needs any more, `decode` runs one step. The KV cache is a `DynamicCache` of
plain full-length layers: sliding windows are enforced by the attention mask rather than by
truncating the cache, so caches of different lengths can be joined. Knows nothing of sampling or
requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from steering.edits import EditTable, FeatureEdit, build_tables, steerable_positions
from steering.hooks import SteeringHooks, StepTables

PAD_ID = 0  # fills left padding; any id serves, since padding is masked and never steered


@dataclass(frozen=True, eq=False)
class Steering:
    """What a forward needs to steer: the hooks, and which token ids are never steered."""

    hooks: SteeringHooks
    special_ids: torch.Tensor  # (S,) long, on the model's device

    def edit_tables(self, row_edits: Sequence[Sequence[FeatureEdit]]) -> dict[str, EditTable]:
        return build_tables(row_edits, self.hooks.saes) if any(row_edits) else {}

    def step_tables(
        self, edit_tables: dict[str, EditTable], ids: torch.Tensor, mask: torch.Tensor | None = None
    ) -> StepTables | None:
        """What the hooks apply to tokens `ids` (B, T), whose padding `mask` marks with 0.

        None: nothing to steer, the plain model runs.
        """
        if not edit_tables and not any(a.reconstruct for a in self.hooks.attachments):
            return None
        steerable = steerable_positions(ids, self.special_ids)
        return StepTables(edit_tables, steerable if mask is None else steerable & mask.bool())


def forward(
    model: torch.nn.Module,
    steering: Steering,
    tables: StepTables | None,
    ids: torch.Tensor,  # (B, T)
    attention_mask: torch.Tensor,  # (B, L + T): 1 for real tokens, 0 for padding
    positions: torch.Tensor,  # (B, T)
    cache: DynamicCache,
) -> tuple[torch.Tensor, DynamicCache]:
    """One forward with steering; the last position's logits (B, V) in float32, and the cache."""
    with (
        torch.inference_mode(),
        steering.hooks.step(tables) if tables is not None else nullcontext(),
    ):
        out = model(
            input_ids=ids,
            attention_mask=attention_mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    return out.logits[:, -1].float(), out.cache


class Batch:
    """Rows decoding together. Row i of every tensor belongs to `keys[i]`."""

    def __init__(
        self,
        keys: list[int],
        row_edits: list[tuple[FeatureEdit, ...]],
        cache: DynamicCache,
        attention_mask: torch.Tensor,  # (B, L)
        next_positions: torch.Tensor,  # (B,) position id of the next token fed
    ) -> None:
        self.keys = keys
        self.row_edits = row_edits
        self.cache = cache
        self.attention_mask = attention_mask
        self.next_positions = next_positions
        self.steered_rows = sum(1 for edits in row_edits if edits)
        self._edit_tables: dict[str, EditTable] | None = None  # built once per set of rows

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def prefill(
        cls,
        model: torch.nn.Module,
        steering: Steering,
        keys: list[int],
        prompts: Sequence[Sequence[int]],
        row_edits: list[tuple[FeatureEdit, ...]],
    ) -> tuple[Batch, torch.Tensor]:
        """A batch of `prompts` (left-padded, one forward), and their next-token logits (B, V)."""
        device = steering.special_ids.device
        length = max(len(p) for p in prompts)
        padded = [[PAD_ID] * (length - len(p)) + list(p) for p in prompts]
        ids = torch.tensor(padded, dtype=torch.long, device=device)  # (B, T)
        mask = torch.tensor(
            [[0] * (length - len(p)) + [1] * len(p) for p in prompts],
            dtype=torch.long,
            device=device,
        )
        positions = (mask.cumsum(dim=1) - 1).clamp_min(0)
        tables = steering.step_tables(steering.edit_tables(row_edits), ids, mask)
        logits, cache = forward(model, steering, tables, ids, mask, positions, DynamicCache())
        return cls(keys, row_edits, cache, mask, mask.sum(dim=1)), logits

    def decode(
        self, model: torch.nn.Module, steering: Steering, tokens: Sequence[int]
    ) -> torch.Tensor:
        """Feed each row its last sampled token; returns the logits (B, V) of the next one."""
        device = self.attention_mask.device
        ids = torch.tensor(tokens, dtype=torch.long, device=device)[:, None]  # (B, 1)
        mask = torch.cat([self.attention_mask, torch.ones_like(ids)], dim=1)  # (B, L + 1)
        if self._edit_tables is None:
            self._edit_tables = steering.edit_tables(self.row_edits)
        tables = steering.step_tables(self._edit_tables, ids)
        logits, self.cache = forward(
            model, steering, tables, ids, mask, self.next_positions[:, None], self.cache
        )
        self.attention_mask = mask
        self.next_positions = self.next_positions + 1
        return logits

    @classmethod
    def concatenate(cls, batches: Sequence[Batch]) -> Batch:
        """One batch of all rows; shorter caches are left-padded with masked zeros."""
        if len(batches) == 1:
            return batches[0]
        length = max(b.attention_mask.shape[1] for b in batches)
        n_layers = len(batches[0].cache.layers)
        layers = [
            tuple(
                torch.cat(
                    [_pad_left(getattr(b.cache.layers[i], kv), length, dim=2) for b in batches]
                )
                for kv in ("keys", "values")
            )
            for i in range(n_layers)
        ]
        return cls(
            keys=[k for b in batches for k in b.keys],
            row_edits=[e for b in batches for e in b.row_edits],
            cache=DynamicCache(ddp_cache_data=layers),
            attention_mask=torch.cat([_pad_left(b.attention_mask, length, dim=1) for b in batches]),
            next_positions=torch.cat([b.next_positions for b in batches]),
        )

    def filter(self, keep: set[int]) -> Batch | None:
        """The rows whose key is in `keep` (None if none is), without padding no row needs."""
        rows = [i for i, key in enumerate(self.keys) if key in keep]
        if not rows:
            return None
        if len(rows) == len(self.keys):
            return self
        index = torch.tensor(rows, device=self.attention_mask.device)
        mask = self.attention_mask[index]
        start = int(
            mask.any(dim=0).int().argmax()
        )  # leading columns that are padding for every row
        layers = [
            (layer.keys[index, :, start:], layer.values[index, :, start:])
            for layer in self.cache.layers
        ]
        return Batch(
            keys=[self.keys[i] for i in rows],
            row_edits=[self.row_edits[i] for i in rows],
            cache=DynamicCache(ddp_cache_data=layers),
            attention_mask=mask[:, start:],
            next_positions=self.next_positions[index],
        )


def _pad_left(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
