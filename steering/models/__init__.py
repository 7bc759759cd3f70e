"""What a served model is: a local Gemma loaded from a Hugging Face folder or a GGUF file
(`gemma`, `gguf`), its special tokens and its decoder layers.

Imports: `steering.errors` only (and torch, transformers). Knows nothing of SAEs or edits.
"""

from steering.models.gemma import LoadedModel, decoder_layers, load_model, special_token_ids

__all__ = ["LoadedModel", "decoder_layers", "load_model", "special_token_ids"]
