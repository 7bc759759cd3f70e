"""A local Gemma for steering: loading it (model + tokenizer) from a Hugging Face folder, or a
GGUF file (or a folder holding one) dequantized at load; its special tokens; its decoder layers.

Only local files: nothing is downloaded. Knows nothing about SAEs or edits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from steering.errors import ModelError
from steering.models.gguf import gguf_file, load_gguf

# Gemma 2 soft-caps attention scores, which only the eager attention implements.
EAGER_ONLY = {"gemma2"}


@dataclass(frozen=True, eq=False)
class LoadedModel:
    model: Any  # a transformers PreTrainedModel, in eval mode
    tokenizer: Any  # a transformers tokenizer

    @property
    def special_ids(self) -> torch.Tensor:
        """(S,) long: ids of the tokenizer's special tokens, whose positions are never steered."""
        return torch.tensor(special_token_ids(self.tokenizer), dtype=torch.long)


def special_token_ids(tokenizer: Any) -> list[int]:
    """Sorted ids of every token the tokenizer marks special: the positions never steered.

    `all_special_ids` alone is not enough: a Gemma 3 tokenizer as converted from GGUF lists
    `<start_of_turn>` / `<end_of_turn>` (and `<start_of_image>`) only as added tokens flagged
    `special=True` in `added_tokens_decoder`, not among its named or extra special tokens, so
    chat prompts would otherwise be steered at their turn markers.
    """
    ids = set(tokenizer.all_special_ids)
    added = getattr(tokenizer, "added_tokens_decoder", {})
    ids.update(i for i, token in added.items() if getattr(token, "special", False))
    return sorted(int(i) for i in ids)


def load_model(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> LoadedModel:
    """Load a local Gemma 2 / Gemma 3 folder or GGUF file; `dtype=None` keeps the checkpoint's
    dtype (float32 for a GGUF, whose quantized weights have no float dtype of their own)."""
    folder = Path(path)
    gguf = gguf_file(folder)
    if gguf is not None:
        model, tokenizer = load_gguf(gguf, dtype=dtype)
        return LoadedModel(model=model.to(device).eval(), tokenizer=tokenizer)
    if not folder.is_dir():
        raise ModelError(
            f"{folder}: not a folder or a .gguf file (expected a local Hugging Face model folder)"
        )
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        text_type = config.get_text_config().model_type
        attn = "eager" if text_type in EAGER_ONLY else None
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype or "auto", attn_implementation=attn, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{folder}: cannot load the model ({exc})") from exc
    return LoadedModel(model=model.to(device).eval(), tokenizer=tokenizer)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of any Gemma variant (text-only or multimodal)."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelError(
            f"{type(model).__name__}: cannot find decoder layers (model.get_decoder().layers)"
        )
    return layers
