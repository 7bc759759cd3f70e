"""What a served model is: a local Gemma loaded from a Hugging Face folder or a GGUF file
(`gemma`, `gguf`), its special tokens and its decoder layers.

Imports: `steering.errors` only (and torch, transformers). Knows nothing of SAEs or edits.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steering.models.gemma import LoadedModel, decoder_layers, load_model, special_token_ids


def __getattr__(name: str) -> Any:
    # On first use: `steering.models.gguf`'s header readers serve startup checks without torch.
    if name in __all__:
        return getattr(importlib.import_module("steering.models.gemma"), name)
    raise AttributeError(f"module 'steering.models' has no attribute {name!r}")


__all__ = ["LoadedModel", "decoder_layers", "load_model", "special_token_ids"]
