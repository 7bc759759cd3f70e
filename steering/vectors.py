"""Raw steering vectors served as a linear SAE: `f_i = x·v_i / |v_i|²` (no threshold, may be
negative) and `W_dec[i] = v_i`, so the edit math is unchanged: ADD c adds c·v_i, SET c sets the
component along v_i to c·v_i, ABLATE projects it out. Reads `[n, d_model]` safetensors (exactly
one tensor) or `.npy` files, and makes difference-of-means vectors from two sets of texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from steering.errors import SaeFormatError
from steering.hooks import decoder_layers
from steering.model import special_token_ids
from steering.sae import JumpReLUSAE


def load_vectors(path: str | Path, *, device: torch.device | str | None = None) -> JumpReLUSAE:
    file = Path(path)
    vectors = _read(file)
    if vectors.ndim != 2 or 0 in vectors.shape:
        raise SaeFormatError(
            f"{file}: expected vectors of shape [n, d_model], got {list(vectors.shape)}"
        )
    if not vectors.is_floating_point() or not torch.isfinite(vectors).all():
        raise SaeFormatError(f"{file}: the vectors must be finite floating-point values")
    v = vectors.float()
    norms = (v * v).sum(dim=1)  # |v_i|²
    if not (norms > 0).all():
        raise SaeFormatError(f"{file}: vector {int((norms <= 0).nonzero()[0])} is zero")
    n, d_model = v.shape
    return JumpReLUSAE(
        W_enc=(v / norms[:, None]).T.contiguous(),
        W_dec=v,
        b_enc=torch.zeros(n),
        b_dec=torch.zeros(d_model),
        threshold=torch.full((n,), float("-inf")),
        kind="vector",
    ).to(device)


def _read(file: Path) -> torch.Tensor:
    if not file.is_file():
        raise SaeFormatError(f"{file}: no such file")
    try:
        if file.suffix == ".npy":
            return torch.from_numpy(np.load(file, allow_pickle=False))
        tensors = load_file(str(file))
    except Exception as exc:  # numpy and safetensors raise many types for a bad file
        raise SaeFormatError(f"{file}: not a readable vector file ({exc})") from exc
    if len(tensors) != 1:
        raise SaeFormatError(f"{file}: expected exactly one tensor, found {len(tensors)}")
    return next(iter(tensors.values()))


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
