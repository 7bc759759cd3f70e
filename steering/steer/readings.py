"""What the hooks read besides steering: feature activations for watch, Inspect and Contrast.

Pure tensor functions over one forward's hidden states. The batch builds a `ReadTable` per SAE
for the rows that ask; the hook fills a `ReadOut` from the SAE's input, before its own edits.
Only rows that ask for every feature (`full_rows`: Inspect's top-k, Contrast's means) pay a full
encode; named features cost O(F·d_model) per position, like the sparse delta.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from steering.sae.jumprelu import JumpReLUSAE


@dataclass(frozen=True, eq=False)
class ReadTable:
    """One SAE's readings in one forward."""

    rows: torch.Tensor  # (R,) long: rows that read named features of this SAE
    features: torch.Tensor  # (F,) long: the union of the named features
    w_enc: torch.Tensor  # (d_model, F) float32
    b_enc: torch.Tensor  # (F,)
    threshold: torch.Tensor  # (F,)
    full_rows: torch.Tensor  # (Q,) long: rows that read every feature
    top_k: int  # top features per position of the full rows (0: none)


@dataclass(frozen=True, eq=False)
class ReadOut:
    """A `ReadTable`'s results; f is 0 at positions that are not steerable (special, padding)."""

    named: torch.Tensor | None  # (R, T, F) float32
    top_values: torch.Tensor | None  # (Q, T, k) float32, largest first
    top_indices: torch.Tensor | None  # (Q, T, k) long
    sums: torch.Tensor | None  # (Q, d_sae) float32: f summed over each row's positions


def read_table(
    sae: JumpReLUSAE,
    rows: list[int],
    features: list[int],
    full_rows: list[int],
    top_k: int,
) -> ReadTable:
    device = sae.device
    index = torch.tensor(features, dtype=torch.long, device=device)
    return ReadTable(
        rows=torch.tensor(rows, dtype=torch.long, device=device),
        features=index,
        # index_select, not W_enc[:, index]: advanced indexing of columns is ~6x slower.
        w_enc=sae.W_enc.index_select(1, index).float(),
        b_enc=sae.b_enc[index].float(),
        threshold=sae.threshold[index].float(),
        full_rows=torch.tensor(full_rows, dtype=torch.long, device=device),
        top_k=top_k,
    )


def read(
    x: torch.Tensor, sae: JumpReLUSAE, table: ReadTable, steerable: torch.Tensor | None
) -> ReadOut:
    """The table's readings of hidden states x (B, T, d_model); steerable (B, T) bool or None."""
    named = None
    if table.rows.numel():
        pre = x[table.rows].float() @ table.w_enc + table.b_enc  # (R, T, F)
        named = _masked(torch.where(pre > table.threshold, pre, 0.0), steerable, table.rows)
    top_values = top_indices = sums = None
    if table.full_rows.numel():
        f = _masked(sae.encode(x[table.full_rows].float()), steerable, table.full_rows)
        sums = f.sum(dim=1)  # (Q, d_sae)
        if table.top_k:
            top_values, top_indices = torch.topk(f, min(table.top_k, f.shape[-1]), dim=-1)
    return ReadOut(named, top_values, top_indices, sums)


def _masked(f: torch.Tensor, steerable: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """f where the position is steerable, else +0 (a product would leave -0 for negative f)."""
    if steerable is None:
        return f
    return torch.where(steerable[rows][..., None], f, 0.0)
