"""Conditional steering: rules that read a feature in the batched forward and fire once.

A rule's condition is read by the hook of its SAE's layer, from the same named-feature reading
that watch uses, at every steerable position of its row. Which rules fired (the latch) stays on
the device with the batch's plan: an edit that a rule switches on is the identity until its
entry is set, and takes effect from the next forward. Pure tensor functions; no Python per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class RuleTable:
    """One SAE's rule conditions in one forward."""

    rows: torch.Tensor  # (Q,) long: the batch rows of the rules
    read_rows: torch.Tensor  # (Q,) long: their rows among the SAE's named reads
    columns: torch.Tensor  # (Q,) long: their `when` feature among the named reads' features
    above: torch.Tensor  # (Q,) float32: thresholds
    ids: torch.Tensor  # (Q,) long: their entries in the latch


def rule_table(
    rows: list[int],
    read_rows: list[int],
    columns: list[int],
    above: list[float],
    ids: list[int],
    device: torch.device,
) -> RuleTable:
    def longs(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return RuleTable(
        longs(rows),
        longs(read_rows),
        longs(columns),
        torch.tensor(above, dtype=torch.float32, device=device),
        longs(ids),
    )


def fired(
    named: torch.Tensor,
    table: RuleTable,
    steerable: torch.Tensor | None,
    latch: torch.Tensor,
) -> torch.Tensor:
    """(Q,) bool: rules whose condition holds at a steerable position of this forward and that
    had not fired before. named: (R, T, F) f of the named features before the SAE's edits."""
    values = named[table.read_rows, :, table.columns]  # (Q, T)
    holds = values > table.above[:, None]
    if steerable is not None:
        holds = holds & steerable[table.rows]
    return holds.any(dim=1) & ~latch[table.ids]
