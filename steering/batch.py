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

from steering.edits import steerable_positions
from steering.hooks import SteeringHooks, StepTables
from steering.plan import (
    Plan,
    Readback,
    RowAsk,
    RowResult,
    add_outputs,
    build_plan,
    fired_rules,
    row_result,
)

PAD_ID = 0  # fills left padding; any id serves, since padding is masked and never steered


@dataclass(frozen=True, eq=False)
class Forward:
    """One forward's plan and what its hooks left; each row's own positions among its T."""

    plan: Plan
    tables: StepTables | None  # None: nothing was steered or read
    positions: list[range]

    def queue(self, readback: Readback) -> None:
        """Set the latch of the rules that fired (on the device: they take effect from the next
        forward), and add what the hooks left to the step's one copy to the host."""
        if self.tables is None:
            return
        latch, totals = self.plan.latch, self.plan.totals
        for sae, table in self.plan.rules.items():
            fired = self.tables.out[f"fired.{sae}"]
            assert isinstance(fired, torch.Tensor) and latch is not None
            latch[table.ids] |= fired
        gathered = []
        for sae, (rows, columns) in self.plan.receipt_gather.items():
            counts = self.tables.out.get(f"counts.{sae}")
            if isinstance(counts, torch.Tensor):
                totals[sae] = totals[sae] + counts if sae in totals else counts
            if sae in totals:
                gathered.append(totals[sae][rows, columns])  # (E_sae, 2): the receipts' entries
        if gathered:
            readback.add("receipts", torch.cat(gathered))
        add_outputs(readback, self.tables.out)

    def results(self, readback: Readback) -> list[RowResult | None]:
        """Each row's results from the step's readback (None: the row asked for nothing)."""
        if self.tables is None:
            return [None] * len(self.positions)
        out, fired = self.tables.out, fired_rules(self.plan, readback)
        return [
            row_result(self.plan, readback, out, b, p, fired.get(b, ()))
            for b, p in enumerate(self.positions)
        ]


@dataclass(frozen=True, eq=False)
class Steering:
    """What a forward needs to steer: the hooks, and which token ids are never steered."""

    hooks: SteeringHooks
    special_ids: torch.Tensor  # (S,) long, on the model's device

    def plan(self, asks: Sequence[RowAsk]) -> Plan:
        return build_plan(asks, self.hooks.saes)

    def step_tables(
        self, plan: Plan, ids: torch.Tensor, mask: torch.Tensor | None = None
    ) -> StepTables | None:
        """What the hooks apply to tokens `ids` (B, T), whose padding `mask` marks with 0.

        None: nothing to steer or read, the plain model runs.
        """
        if plan.empty and not any(a.reconstruct for a in self.hooks.attachments):
            return None
        steerable = steerable_positions(ids, self.special_ids)
        steerable = steerable if mask is None else steerable & mask.bool()
        return StepTables(plan.edits, steerable, plan.reads, rules=plan.rules, latch=plan.latch)


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
        asks: list[RowAsk],
        cache: DynamicCache,
        attention_mask: torch.Tensor,  # (B, L)
        next_positions: torch.Tensor,  # (B,) position id of the next token fed
    ) -> None:
        self.keys = keys
        self.asks = asks
        self.cache = cache
        self.attention_mask = attention_mask
        self.next_positions = next_positions
        self.steered_rows = sum(1 for ask in asks if ask.edits)
        self._plan: Plan | None = None  # built once per set of rows

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def prefill(
        cls,
        model: torch.nn.Module,
        steering: Steering,
        keys: list[int],
        prompts: Sequence[Sequence[int]],
        asks: list[RowAsk],
    ) -> tuple[Batch, torch.Tensor, Forward]:
        """A batch of `prompts` (left-padded, one forward), their next-token logits (B, V), and
        what the forward read."""
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
        plan = steering.plan(asks)
        tables = steering.step_tables(plan, ids, mask)
        logits, cache = forward(model, steering, tables, ids, mask, positions, DynamicCache())
        done = Forward(plan, tables, [range(length - len(p), length) for p in prompts])
        return cls(keys, asks, cache, mask, mask.sum(dim=1)), logits, done

    def decode(
        self, model: torch.nn.Module, steering: Steering, tokens: Sequence[int]
    ) -> tuple[torch.Tensor, Forward]:
        """Feed each row its last sampled token; the logits (B, V) of the next one, and what the
        forward read."""
        device = self.attention_mask.device
        ids = torch.tensor(tokens, dtype=torch.long, device=device)[:, None]  # (B, 1)
        mask = torch.cat([self.attention_mask, torch.ones_like(ids)], dim=1)  # (B, L + 1)
        if self._plan is None:
            self._plan = steering.plan(self.asks)
        tables = steering.step_tables(self._plan, ids)
        logits, self.cache = forward(
            model, steering, tables, ids, mask, self.next_positions[:, None], self.cache
        )
        self.attention_mask = mask
        self.next_positions = self.next_positions + 1
        return logits, Forward(self._plan, tables, [range(1)] * len(self.keys))

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
            asks=[a for b in batches for a in b.asks],
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
            asks=[self.asks[i] for i in rows],
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
