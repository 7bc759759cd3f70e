"""Loading a local Hugging Face Gemma folder (model + tokenizer) for steering.

Only local folders: nothing is downloaded. Knows nothing about SAEs or edits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from steering.errors import ModelError

# Gemma 2 soft-caps attention scores, which only the eager attention implements.
EAGER_ONLY = {"gemma2"}


@dataclass(frozen=True, eq=False)
class LoadedModel:
    model: Any  # a transformers PreTrainedModel, in eval mode
    tokenizer: Any  # a transformers tokenizer

    @property
    def special_ids(self) -> torch.Tensor:
        """(S,) long: ids of the tokenizer's special tokens, whose positions are never steered."""
        return torch.tensor(sorted(set(self.tokenizer.all_special_ids)), dtype=torch.long)


def load_model(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> LoadedModel:
    """Load a local Gemma 2 / Gemma 3 folder; `dtype=None` keeps the checkpoint's dtype."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelError(f"{folder}: not a folder (expected a local Hugging Face model folder)")
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
