"""One model forward with steering, shared by the batch's prefill and the decoder's steps.

`Steering` is what a forward needs to steer (the hooks, the special ids, the per-slot tables);
`forward` runs the model once over the slot cache; `Forward` carries one forward's tables and
turns what its hooks left into each row's results. Knows nothing of rows, sampling or requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from steering.engine.slot_cache import SlotCache
from steering.steer.hooks import SteeringHooks, StepTables
from steering.steer.plan import (
    Plan,
    Readback,
    RowAsk,
    RowResult,
    add_outputs,
    build_plan,
    fired_rules,
    row_result,
)
from steering.steer.slot_tables import SlotStep, SlotTables
from steering.steer.tables import steerable_positions

PAD_ID = 0  # fills left padding; any id serves, since padding is masked and never steered


@dataclass(frozen=True, eq=False)
class Forward:
    """One forward's tables and what its hooks left; each row's own positions among its T."""

    source: Plan | SlotTables  # where the rows' tables are: a prefill's plan, or the slots
    tables: StepTables | None  # None: nothing was steered or read
    positions: list[range]  # per row of the batch
    at: list[int]  # per row of the batch, its row in the forward (its slot in a decode)
    # A prefill chunk that scores: the log-probabilities (K,) of the tokens that follow its
    # scored positions, float32 on the device (see `prefill_chunk`); None: nothing scored.
    scored: torch.Tensor | None = None

    def queue(self, readback: Readback) -> None:
        """Set the latch of the rules that fired in a decode (on the device: they take effect
        from the next forward), and add what the hooks left to the step's one copy to the host."""
        if self.tables is None:
            return
        if isinstance(self.source, SlotTables):
            assert self.tables.slots is not None
            self.source.queue(self.tables.slots.n, self.tables.out, readback)
            return
        # A prefill's plan keeps its latch as the row came in through all of its prompt's
        # chunks: a rule that fires in the prompt switches its edits on from the first decode
        # step, wherever the chunks end (the engine records it; the slot's latch starts with it).
        plan = self.source
        totals = plan.totals
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
    return forward_logits(model, steering, tables, ids, masks, positions, cache, 1)[:, -1].float()


def forward_logits(
    model: torch.nn.Module,
    steering: Steering,
    tables: StepTables | None,
    ids: torch.Tensor,  # (B, T)
    masks: dict[str, torch.Tensor],  # per layer type, (B, 1, T, L)
    positions: torch.Tensor,  # (B, T)
    cache: SlotCache,
    keep: int,
) -> torch.Tensor:
    """One forward with steering; the logits of the last `keep` positions (B, keep, V) in the
    model's dtype (after the model's own final softcap, where it has one)."""
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
            logits_to_keep=keep,
        )
    logits: torch.Tensor = out.logits
    return logits


def eager_attention(model: Any) -> bool:
    """Whether the model adds its masks to the scores (eager) rather than taking booleans."""
    config = model.config.get_text_config()
    return getattr(config, "_attn_implementation", None) == "eager"
