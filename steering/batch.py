"""The running batch: which slot of the static KV cache each row holds, its positions, and the
model forward.

A small contract in the manner of TGI: `prefill` makes a batch from prompts (one left-padded
forward that writes each prompt into its own slot), `concatenate` joins batches, `filter` keeps
some rows (a row that leaves frees its slot), `decode` runs one step over the slots. Joining and
leaving move no cache: only the small per-row lists change. Knows nothing of sampling or
requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

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
from steering.slot_tables import SlotStep, SlotTables
from steering.slots import SlotCache

if TYPE_CHECKING:
    from steering.decoder import Decoder

PAD_ID = 0  # fills left padding; any id serves, since padding is masked and never steered


@dataclass(frozen=True, eq=False)
class Forward:
    """One forward's tables and what its hooks left; each row's own positions among its T."""

    source: Plan | SlotTables  # where the rows' tables are: a prefill's plan, or the slots
    tables: StepTables | None  # None: nothing was steered or read
    positions: list[range]  # per row of the batch
    at: list[int]  # per row of the batch, its row in the forward (its slot in a decode)

    def queue(self, readback: Readback) -> None:
        """Set the latch of the rules that fired (on the device: they take effect from the next
        forward), and add what the hooks left to the step's one copy to the host."""
        if self.tables is None:
            return
        if isinstance(self.source, SlotTables):
            assert self.tables.slots is not None
            self.source.queue(self.tables.slots.n, self.tables.out, readback)
            return
        plan = self.source
        latch, totals = plan.latch, plan.totals
        for sae, table in plan.rules.items():
            fired = self.tables.out[f"fired.{sae}"]
            assert isinstance(fired, torch.Tensor) and latch is not None
            latch[table.ids] |= fired
        gathered = []
        for sae, (rows, columns) in plan.receipt_gather.items():
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
        if isinstance(self.source, SlotTables):
            slots = self.source
            return [slots.result(readback, b) for b in self.at]
        plan, out = self.source, self.tables.out
        fired = fired_rules(plan, readback)
        return [
            row_result(plan, readback, out, b, p, fired.get(b, ()))
            for b, p in zip(self.at, self.positions, strict=True)
        ]


@dataclass(frozen=True, eq=False)
class Steering:
    """What a forward needs to steer: the hooks, which token ids are never steered, and the
    running rows' per-slot tables."""

    hooks: SteeringHooks
    special_ids: torch.Tensor  # (S,) long, on the model's device
    slots: SlotTables

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

    def slot_tables(self, ids: torch.Tensor) -> StepTables | None:
        """What the hooks apply in a decode over slots 0..n-1 feeding `ids` (n, 1); None:
        nothing to steer or read."""
        n = ids.shape[0]
        widths = self.slots.widths(n)
        if not widths and not any(a.reconstruct for a in self.hooks.attachments):
            return None
        step = SlotStep(self.slots, n, widths, self.slots.latch[:n])
        return StepTables(steerable=steerable_positions(ids, self.special_ids), slots=step)


def forward(
    model: torch.nn.Module,
    steering: Steering,
    tables: StepTables | None,
    ids: torch.Tensor,  # (B, T)
    masks: dict[str, torch.Tensor],  # per layer type, (B, 1, T, L)
    positions: torch.Tensor,  # (B, T)
    cache: SlotCache,
) -> torch.Tensor:
    """One forward with steering; the last position's logits (B, V) in float32."""
    with (
        torch.inference_mode(),
        steering.hooks.step(tables) if tables is not None else nullcontext(),
    ):
        out = model(
            input_ids=ids,
            attention_mask=masks,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    logits: torch.Tensor = out.logits[:, -1].float()
    return logits


def eager_attention(model: Any) -> bool:
    """Whether the model adds its masks to the scores (eager) rather than taking booleans."""
    config = model.config.get_text_config()
    return getattr(config, "_attn_implementation", None) == "eager"


class Batch:
    """Rows decoding together. Row i of `keys`, `asks`, `slots` and `positions` is one request."""

    def __init__(
        self,
        keys: list[int],
        asks: list[RowAsk],
        slots: list[int],
        positions: list[int],  # position id of the next token each row feeds (= tokens held)
    ) -> None:
        self.keys = keys
        self.asks = asks
        self.slots = slots
        self.positions = positions
        self.steered_rows = sum(1 for ask in asks if ask.edits)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def attention_mask(self) -> torch.Tensor:
        """(B, L): 1 where a row's slot holds a position, L the most any row holds."""
        length = max(self.positions)
        return torch.tensor([[1] * p + [0] * (length - p) for p in self.positions])

    @classmethod
    def prefill(
        cls,
        model: torch.nn.Module,
        steering: Steering,
        cache: SlotCache,
        slots: list[int],
        keys: list[int],
        prompts: Sequence[Sequence[int]],
        asks: list[RowAsk],
    ) -> tuple[Batch, torch.Tensor, Forward]:
        """A batch of `prompts` (left-padded, one forward) written into `slots` of the cache,
        their next-token logits (B, V), and what the forward read."""
        device = steering.special_ids.device
        width = max(len(p) for p in prompts)
        padded = [[PAD_ID] * (width - len(p)) + list(p) for p in prompts]
        ids = torch.tensor(padded, dtype=torch.long, device=device)  # (B, T)
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=device)
        mask = torch.arange(width, device=device)[None, :] >= (width - lengths[:, None])
        positions = (mask.long().cumsum(dim=1) - 1).clamp_min(0)
        cache.prefill(torch.tensor(slots, dtype=torch.long, device=device), lengths, width)
        masks = cache.prefill_masks(lengths, width, eager_attention(model))
        plan = steering.plan(asks)
        tables = steering.step_tables(plan, ids, mask)
        logits = forward(model, steering, tables, ids, masks, positions, cache)
        done = Forward(
            plan, tables, [range(width - len(p), width) for p in prompts], list(range(len(keys)))
        )
        return cls(keys, asks, slots, [len(p) for p in prompts]), logits, done

    def decode(self, decoder: Decoder, tokens: Sequence[int]) -> tuple[torch.Tensor, Forward]:
        """Feed each row its last sampled token; the logits (B, V) of the next one, and what the
        forward read. The forward runs over slots 0..n-1 (row b of it is slot b); free slots
        among them feed padding at position 0 and are never read."""
        device = decoder.cache.shape.device
        n = max(self.slots) + 1
        fed, at = [PAD_ID] * n, [0] * n
        for slot, token, position in zip(self.slots, tokens, self.positions, strict=True):
            fed[slot], at[slot] = token, position
        ids = torch.tensor(fed, dtype=torch.long, device=device)[:, None]  # (n, 1)
        positions = torch.tensor(at, dtype=torch.long, device=device)  # (n,)
        logits, tables = decoder(ids, positions, max(self.positions) + 1)
        self.positions = [p + 1 for p in self.positions]
        rows = torch.tensor(self.slots, dtype=torch.long, device=device)
        slots = decoder.steering.slots
        done = Forward(slots, tables, [range(1)] * len(self.keys), list(self.slots))
        return logits.index_select(0, rows), done

    @classmethod
    def concatenate(cls, batches: Sequence[Batch]) -> Batch:
        """One batch of all rows; their slots stay where they are."""
        if len(batches) == 1:
            return batches[0]
        return cls(
            keys=[k for b in batches for k in b.keys],
            asks=[a for b in batches for a in b.asks],
            slots=[s for b in batches for s in b.slots],
            positions=[p for b in batches for p in b.positions],
        )

    def filter(self, keep: set[int]) -> Batch | None:
        """The rows whose key is in `keep` (None if none is); the others' slots are free."""
        rows = [i for i, key in enumerate(self.keys) if key in keep]
        if not rows:
            return None
        if len(rows) == len(self.keys):
            return self
        return Batch(
            keys=[self.keys[i] for i in rows],
            asks=[self.asks[i] for i in rows],
            slots=[self.slots[i] for i in rows],
            positions=[self.positions[i] for i in rows],
        )
