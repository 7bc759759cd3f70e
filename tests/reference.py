"""Reference steering written the long way, independent of the library's tables and registry."""

from __future__ import annotations

import torch

from steering import EditMode, FeatureEdit, JumpReLUSAE


def edited_value(f: torch.Tensor, edit: FeatureEdit) -> torch.Tensor:
    """The edited activation of one feature; f: (T,)."""
    if edit.mode is EditMode.SET:
        new = torch.full_like(f, edit.value)
    elif edit.mode is EditMode.ADD:
        new = f + edit.value
    elif edit.mode is EditMode.SCALE:
        new = f * edit.value
    else:
        new = torch.zeros_like(f)
    return torch.where(f > 0, new, f) if edit.only_when_active else new


def reference_row(
    x: torch.Tensor,
    sae: JumpReLUSAE,
    edits: list[FeatureEdit],
    steerable: torch.Tensor | None = None,
) -> torch.Tensor:
    """x̂' + (x - x̂) for one row x: (T, d_model), in float32, via the full SAE."""
    x = x.float()
    f = sae.encode(x)
    f_edited = f.clone()
    for edit in edits:
        f_edited[:, edit.feature] = edited_value(f[:, edit.feature], edit)
    out = sae.decode(f_edited) + (x - sae.decode(f))
    if steerable is not None:
        out = torch.where(steerable[:, None], out, x)
    return out


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest per-row relative error ||a - b|| / ||b|| over the last dimension."""
    a, b = a.double(), b.double()
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)).max())
