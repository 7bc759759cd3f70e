"""JumpReLU sparse autoencoder parameters and their math (Gemma Scope conventions).

Knows nothing about files (see `sae_formats`) or about steering edits (see `edits`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from steering.errors import SaeFormatError

PARAM_SHAPES = {
    "W_enc": ("d_model", "d_sae"),
    "W_dec": ("d_sae", "d_model"),
    "b_enc": ("d_sae",),
    "b_dec": ("d_model",),
    "threshold": ("d_sae",),
}


@dataclass(frozen=True, eq=False)
class JumpReLUSAE:
    """A JumpReLU SAE: `f = pre * (pre > threshold)` with `pre = x @ W_enc + b_enc`.

    Gemma Scope SAEs take the raw residual: no input normalisation, no `b_dec` subtraction.
    Arithmetic always runs in float32, whatever the storage dtype or the input's dtype.
    """

    W_enc: torch.Tensor  # (d_model, d_sae)
    W_dec: torch.Tensor  # (d_sae, d_model)
    b_enc: torch.Tensor  # (d_sae,)
    b_dec: torch.Tensor  # (d_model,)
    threshold: torch.Tensor  # (d_sae,)
    kind: str = "jumprelu"  # or "vector": steering vectors as a linear SAE (threshold -inf)

    def __post_init__(self) -> None:
        problem = shape_problem(self.params())
        if problem:
            raise SaeFormatError(problem)

    @property
    def d_model(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def params(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in PARAM_SHAPES}

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> JumpReLUSAE:
        moved = {k: v.to(device=device, dtype=dtype) for k, v in self.params().items()}
        return JumpReLUSAE.from_params(moved, self.kind)

    @classmethod
    def from_params(cls, params: dict[str, torch.Tensor], kind: str = "jumprelu") -> JumpReLUSAE:
        """An SAE from tensors named as PARAM_SHAPES names them."""
        p = params
        return cls(p["W_enc"], p["W_dec"], p["b_enc"], p["b_dec"], p["threshold"], kind)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_model) -> (..., d_sae) feature activations, in float32."""
        pre = x.float() @ self.W_enc.float() + self.b_enc.float()
        return pre * (pre > self.threshold.float())

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """(..., d_sae) -> (..., d_model) reconstruction, in float32."""
        return f.float() @ self.W_dec.float() + self.b_dec.float()


def shape_problem(params: dict[str, torch.Tensor]) -> str | None:
    """Why these tensors are not one SAE's parameters, or None if they are."""
    sizes: dict[str, int] = {}
    for name, dims in PARAM_SHAPES.items():
        shape = tuple(params[name].shape)
        if len(shape) != len(dims):
            return f"'{name}' has shape {list(shape)}, expected [{', '.join(dims)}]"
        for dim, size in zip(dims, shape, strict=False):
            if sizes.setdefault(dim, size) != size:
                return (
                    f"'{name}' has shape {list(shape)}: its {dim} is {size} "
                    f"but another parameter says {dim} is {sizes[dim]}"
                )
    return None
