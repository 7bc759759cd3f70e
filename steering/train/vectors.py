"""Difference-of-means steering vectors: the mean residual at one layer over one set of texts,
minus the same over another. What `steering-vector` writes and `--vector` serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from steering.models.gemma import decoder_layers, special_token_ids


def difference_of_means(
    model: Any, tokenizer: Any, layer: int, a: Sequence[str], b: Sequence[str]
) -> torch.Tensor:
    """(d_model,): the mean residual at the output of decoder `layer` over texts `a`, minus the
    same over `b`. Each text counts once: its mean over its steerable (non-special) positions."""
    special = torch.tensor(special_token_ids(tokenizer), dtype=torch.long)
    return _mean_residual(model, tokenizer, layer, a, special) - _mean_residual(
        model, tokenizer, layer, b, special
    )


def _mean_residual(
    model: Any, tokenizer: Any, layer: int, texts: Sequence[str], special: torch.Tensor
) -> torch.Tensor:
    device = next(model.parameters()).device
    seen: list[torch.Tensor] = []  # the layer's output of the latest forward, (T, d_model)

    def grab(module: Any, args: Any, output: Any) -> None:
        seen[:] = [(output[0] if isinstance(output, tuple) else output)[0].float()]

    means = []
    handle = decoder_layers(model)[layer].register_forward_hook(grab)
    try:
        for text in texts:
            ids = torch.tensor([tokenizer(text).input_ids], device=device)
            keep = ~torch.isin(ids[0], special.to(device))
            if not keep.any():
                raise ValueError(f"the text {text!r} has no steerable position")
            with torch.inference_mode():
                model(input_ids=ids)
            means.append(seen[0][keep].mean(dim=0))
    finally:
        handle.remove()
    return torch.stack(means).mean(dim=0).cpu()
