"""The steering math: edits -> per-SAE affine tables, and the sparse delta they add.

Every edit mode is one affine map per (row, feature), `f' = alpha * f + beta`, optionally gated
to positions where the feature is active. `build_tables` turns the edits of a batch's rows into
one table per SAE; `apply_sparse_delta` adds `sum_i (f'_i - f_i) * W_dec[i]` to the residual,
which keeps the SAE's reconstruction error and touches only the edited features.
Pure functions of tensors: no model, no hooks, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from steering.edits import EditMode, FeatureEdit
from steering.sae.jumprelu import JumpReLUSAE

# The registry of edit modes: value -> (alpha, beta) of f' = alpha * f + beta.
AFFINE_OF_MODE: dict[EditMode, Callable[[float], tuple[float, float]]] = {
    EditMode.SET: lambda v: (0.0, v),
    EditMode.ADD: lambda v: (1.0, v),
    EditMode.SCALE: lambda v: (v, 0.0),
    EditMode.ABLATE: lambda v: (0.0, 0.0),
}


@dataclass(frozen=True, eq=False)
class EditTable:
    """One SAE's edits for one batch: the union of edited features, and per-row affine maps.

    Only rows that edit this SAE appear (`rows`); every other row is left untouched. A row that
    does not edit one of the union's features carries the identity (alpha 1, beta 0) for it.
    """

    rows: torch.Tensor  # (R,) long, batch rows with edits on this SAE
    features: torch.Tensor  # (F,) long
    w_enc: torch.Tensor  # (d_model, F) float32, encoder columns of the features
    b_enc: torch.Tensor  # (F,)
    threshold: torch.Tensor  # (F,)
    w_dec: torch.Tensor  # (F, d_model) float32, decoder rows of the features
    alpha: torch.Tensor  # (R, F)
    beta: torch.Tensor  # (R, F)
    gated: torch.Tensor  # (R, F) bool: edit only where the feature is active
    # (R, F) long: where in a step's latch (rules fired; its last entry always True) each edit's
    # switch is; None: every edit is on (no rule edits).
    switch: torch.Tensor | None = None


def build_tables(
    row_edits: Sequence[Sequence[FeatureEdit]],
    saes: Mapping[str, JumpReLUSAE],
    switches: Sequence[Sequence[int]] | None = None,
) -> dict[str, EditTable]:
    """Per-SAE tables for a batch whose row b carries `row_edits[b]` (already validated).

    `switches[b][k]`: the latch entry that turns row b's edit k on (-1: always on); None: all on.
    """
    by_sae: dict[str, dict[int, list[FeatureEdit]]] = {}
    switch_of: dict[tuple[int, FeatureEdit], int] = {}
    for row, edits in enumerate(row_edits):
        for k, edit in enumerate(edits):
            by_sae.setdefault(edit.sae, {}).setdefault(row, []).append(edit)
            if switches is not None:
                switch_of[row, edit] = switches[row][k]
    return {name: _table(saes[name], rows, switch_of) for name, rows in by_sae.items()}


def _table(
    sae: JumpReLUSAE,
    edits_of_row: dict[int, list[FeatureEdit]],
    switch_of: Mapping[tuple[int, FeatureEdit], int],
) -> EditTable:
    features = sorted({edit.feature for edits in edits_of_row.values() for edit in edits})
    column = {feature: j for j, feature in enumerate(features)}
    # One entry per edit (not per row x feature): the tables are filled by scatter.
    at_row, at_col, alphas, betas, gates, switches = [], [], [], [], [], []
    for r, (row, edits) in enumerate(edits_of_row.items()):
        for edit in edits:
            alpha, beta = AFFINE_OF_MODE[edit.mode](edit.value)
            at_row.append(r)
            at_col.append(column[edit.feature])
            alphas.append(alpha)
            betas.append(beta)
            gates.append(edit.only_when_active)
            switches.append(switch_of.get((row, edit), -1))
    device = sae.device
    shape = (len(edits_of_row), len(features))
    where = (torch.tensor(at_row, device=device), torch.tensor(at_col, device=device))
    alpha_table = torch.ones(shape, device=device)
    alpha_table[where] = torch.tensor(alphas, dtype=torch.float32, device=device)
    beta_table = torch.zeros(shape, device=device)
    beta_table[where] = torch.tensor(betas, dtype=torch.float32, device=device)
    gate_table = torch.zeros(shape, dtype=torch.bool, device=device)
    gate_table[where] = torch.tensor(gates, device=device)
    switch_table = None
    if any(s >= 0 for s in switches):
        switch_table = torch.full(shape, -1, dtype=torch.long, device=device)
        switch_table[where] = torch.tensor(switches, dtype=torch.long, device=device)
    index = torch.tensor(features, dtype=torch.long, device=device)
    return EditTable(
        rows=torch.tensor(list(edits_of_row), dtype=torch.long, device=device),
        features=index,
        # index_select, not W_enc[:, index]: advanced indexing of columns is ~6x slower here.
        w_enc=sae.W_enc.index_select(1, index).float(),
        b_enc=sae.b_enc[index].float(),
        threshold=sae.threshold[index].float(),
        w_dec=sae.W_dec.index_select(0, index).float(),
        alpha=alpha_table,
        beta=beta_table,
        gated=gate_table,
        switch=switch_table,
    )


def edit_features(
    f: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, gated: torch.Tensor
) -> torch.Tensor:
    """f' = alpha * f + beta, except where gated and the feature is not active.

    f: (R, T, F); alpha, beta, gated: (R, F).
    """
    edited = alpha[:, None, :] * f + beta[:, None, :]
    return torch.where(gated[:, None, :] & (f <= 0), f, edited)


def table_activations(x: torch.Tensor, table: EditTable) -> torch.Tensor:
    """f of the table's features at its rows: (B, T, d_model) -> (R, T, F) float32."""
    pre = x[table.rows].float() @ table.w_enc + table.b_enc
    return pre * (pre > table.threshold)


def sparse_delta(x: torch.Tensor, table: EditTable) -> torch.Tensor:
    """sum_i (f'_i - f_i) * W_dec[i] for the table's rows: (B, T, d_model) -> (R, T, d_model)."""
    f = table_activations(x, table)
    return (edit_features(f, table.alpha, table.beta, table.gated) - f) @ table.w_dec


def edit_counts(
    f: torch.Tensor, table: EditTable, steerable: torch.Tensor | None = None
) -> torch.Tensor:
    """Per (row, feature), the positions where the edit applied and where the feature was active
    before it, steerable positions only: f (R, T, F) -> (R, F, 2) long. Feeds edit receipts."""
    active = f > 0
    applied = ~table.gated[:, None, :] | active  # a gated edit applies only where active
    if steerable is not None:
        mask = steerable[table.rows][..., None]
        active, applied = active & mask, applied & mask
    return torch.stack([applied.sum(dim=1), active.sum(dim=1)], dim=-1)


def steer_rows(
    x: torch.Tensor,
    table: EditTable,
    steerable: torch.Tensor | None = None,
    latch: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`apply_sparse_delta`, and the table's `edit_counts` from the same encode.

    `latch` (L,) bool: the rules fired so far; an edit whose switch is off stays the identity.
    """
    f = table_activations(x, table)  # (R, T, F)
    alpha, beta, on = table.alpha, table.beta, None
    if table.switch is not None and latch is not None:
        on = latch[table.switch]  # (R, F)
        alpha, beta = torch.where(on, alpha, 1.0), torch.where(on, beta, 0.0)
    delta = (edit_features(f, alpha, beta, table.gated) - f) @ table.w_dec
    if steerable is not None:
        delta = torch.where(steerable[table.rows][..., None], delta, 0.0)
    out = x.clone()
    out[table.rows] = (x[table.rows].float() + delta).to(x.dtype)
    counts = edit_counts(f, table, steerable)
    return out, counts if on is None else counts * on[..., None]


def apply_sparse_delta(
    x: torch.Tensor, table: EditTable, steerable: torch.Tensor | None = None
) -> torch.Tensor:
    """x + sparse delta at the table's rows and steerable positions; a new tensor, x's dtype.

    x: (B, T, d_model); steerable: (B, T) bool, False at positions left alone (special tokens).
    """
    return steer_rows(x, table, steerable)[0]


def apply_full(
    x: torch.Tensor,
    sae: JumpReLUSAE,
    table: EditTable | None,
    steerable: torch.Tensor | None = None,
    *,
    keep_error: bool = True,
) -> torch.Tensor:
    """Full encode -> edit -> decode over every row: x̂' + (x - x̂), or x̂' alone without the error.

    The naive hook and the research "full reconstruction" mode; the sparse delta gives the same
    result as `keep_error=True` at a fraction of the cost.
    """
    xf = x.float()
    f = sae.encode(xf)  # (B, T, d_sae)
    f_edited = f.clone()
    if table is not None:
        rows, cols = table.rows[:, None, None], table.features[None, None, :]
        positions = torch.arange(x.shape[1], device=x.device)[None, :, None]
        f_edited[rows, positions, cols] = edit_features(
            f[rows, positions, cols], table.alpha, table.beta, table.gated
        )
    out = sae.decode(f_edited)
    if keep_error:
        out = out + (xf - sae.decode(f))
    if steerable is not None:
        out = torch.where(steerable[..., None], out, xf)
    return out.to(x.dtype)


def steerable_positions(input_ids: torch.Tensor, special_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: True where the token is not special (BOS, pad, turn markers, ...)."""
    return ~torch.isin(input_ids, special_ids)
