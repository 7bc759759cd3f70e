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


def reference_forward(
    model: Any,
    attachments: Sequence[Any],
    special_ids: Collection[int],
    ids: Sequence[int],
    edits: Sequence[tuple[FeatureEdit, int]],
    *,
    every_position: bool = False,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One forward without cache over `ids`, with each (edit, start) applied at the steerable
    positions from `start` on; SAEs on one layer in order. Returns, per SAE, f (T, d_sae) as it
    encodes its input before its own edits (0 at special positions), and the next logits (V,)
    (`every_position`: the logits at every position, (T, V)).
    Every SAE is encoded by hand; edits add (f' - f) * W_dec[i], the error term kept."""
    x_ids = torch.tensor([list(ids)])
    steerable = ~torch.isin(x_ids[0], torch.tensor(sorted(special_ids), dtype=torch.long))
    positions = torch.arange(len(ids))
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for layer in sorted({a.layer for a in attachments}):
        on_layer = [a for a in attachments if a.layer == layer]

        def hook(module: Any, args: Any, output: Any, on_layer: Any = on_layer) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            row = hidden[0].float()
            for a in on_layer:
                pre = row @ a.sae.W_enc.float() + a.sae.b_enc.float()
                f = torch.where(pre > a.sae.threshold.float(), pre, torch.zeros_like(pre))
                seen[a.name] = f * steerable[:, None]
                delta = torch.zeros_like(row)
                for edit, start in edits:
                    if edit.sae == a.name:
                        i = edit.feature
                        change = edited_value(f[:, i], edit) - f[:, i]
                        where = steerable & (positions >= start)
                        delta += (change * where)[:, None] * a.sae.W_dec[i].float()
                row = row + delta
            new = row.to(hidden.dtype)[None]
            return (new, *output[1:]) if isinstance(output, tuple) else new

        handles.append(model.get_decoder().layers[layer].register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = model(input_ids=x_ids, use_cache=False).logits[0]
    finally:
        for h in handles:
            h.remove()
    return seen, logits if every_position else logits[-1]
