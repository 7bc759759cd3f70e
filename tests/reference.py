"""Reference steering written the long way, independent of the library's tables and registry."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

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


def reference_greedy(
    model: Any,
    prompt: Sequence[int],
    sae: JumpReLUSAE,
    layer: int,
    edits: list[FeatureEdit],
    n: int,
    *,
    special_ids: Collection[int],
) -> list[int]:
    """`n` greedy tokens after `prompt`, steered at the output of decoder layer `layer`.

    Written the long way: every step re-runs the whole sequence without a cache, and a plain
    forward hook replaces each row by `reference_row`, leaving positions whose token is in
    `special_ids` untouched (so the caller decides which ids are never steered).
    """
    ids = torch.tensor([list(prompt)])
    skipped = torch.tensor(sorted(special_ids), dtype=torch.long)

    def steer(module: Any, args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        steerable = ~torch.isin(ids[0], skipped)
        row = reference_row(hidden[0], sae, edits, steerable).to(hidden.dtype)[None]
        return (row, *output[1:]) if isinstance(output, tuple) else row

    handle = model.get_decoder().layers[layer].register_forward_hook(steer)
    try:
        with torch.no_grad():
            for _ in range(n):
                logits = model(input_ids=ids, use_cache=False).logits
                ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    finally:
        handle.remove()
    return ids[0, len(prompt) :].tolist()


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest per-row relative error ||a - b|| / ||b|| over the last dimension."""
    a, b = a.double(), b.double()
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)).max())
