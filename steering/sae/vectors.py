"""Raw steering vectors served as a linear SAE: `f_i = x·v_i / |v_i|²` (no threshold, may be
negative) and `W_dec[i] = v_i`, so the edit math is unchanged: ADD c adds c·v_i, SET c sets the
component along v_i to c·v_i, ABLATE projects it out. Reads `[n, d_model]` safetensors (exactly
one tensor) or `.npy` files; `steering.train.vectors` makes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from steering.errors import SaeFormatError
from steering.sae.jumprelu import JumpReLUSAE


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
    if not torch.isfinite(v).all():  # finite in float64, inf in the float32 served
        raise SaeFormatError(f"{file}: the vectors hold values too large for float32")
    n, d_model = v.shape
    return JumpReLUSAE(
        W_enc=_encoder(v, file),
        W_dec=v,
        b_enc=torch.zeros(n),
        b_dec=torch.zeros(d_model),
        threshold=torch.full((n,), float("-inf")),
        kind="vector",
    ).to(device)


def _encoder(v: torch.Tensor, file: Path) -> torch.Tensor:
    """`v_i / |v_i|²` as columns `[d_model, n]`, computed in float64 so that a tiny vector whose
    |v_i|² underflows float32 still serves; refused where the result overflows float32."""
    v64 = v.double()
    norms = (v64 * v64).sum(dim=1)  # |v_i|²
    zero = (norms == 0).nonzero()
    if len(zero):
        raise SaeFormatError(f"{file}: vector {int(zero[0])} is zero (in float32)")
    encoder = (v64 / norms[:, None]).float()
    too_small = (~torch.isfinite(encoder).all(dim=1)).nonzero()
    if len(too_small):
        i = int(too_small[0])
        raise SaeFormatError(
            f"{file}: vector {i} is too small (norm {float(norms[i].sqrt()):.3g}): "
            "v / |v|² overflows float32; scale it up"
        )
    return encoder.T.contiguous()


def vector_shape(path: str | Path) -> tuple[int, ...]:
    """The shape of a vector file's one tensor, from its header alone (for startup checks)."""
    file = Path(path)
    if not file.is_file():
        raise SaeFormatError(f"{file}: no such file")
    try:
        if file.suffix == ".npy":
            return tuple(np.load(file, mmap_mode="r", allow_pickle=False).shape)
        with safe_open(str(file), framework="numpy") as tensors:
            keys = list(tensors.keys())
            if len(keys) != 1:
                raise SaeFormatError(f"{file}: expected exactly one tensor, found {len(keys)}")
            return tuple(tensors.get_slice(keys[0]).get_shape())
    except SaeFormatError:
        raise
    except Exception as exc:  # numpy and safetensors raise many types for a bad file
        raise SaeFormatError(f"{file}: not a readable vector file ({exc})") from exc


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
