"""GGUF Gemma checkpoints: dequantized at load through transformers' GGUF support.

A GGUF file (llama.cpp's format, e.g. the package index's Gemma 3 270M in Q4_K_M) becomes an
ordinary float model: transformers reads it with the `gguf` package and dequantizes every
tensor. What the conversion leaves out is put back here: Gemma's chat template when the file
carries none. `save_folder` writes the result as a plain Hugging Face folder, which loads in
seconds instead of the dequantization's tens of seconds.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steering.errors import ModelError

if TYPE_CHECKING:
    import torch

GGUF_SUFFIX = ".gguf"
EXTRA_HINT = "install the `gguf` extra: pip install 'steering-server[gguf]'"

# Gemma's chat template (as the instruction-tuned Gemma tokenizers ship it), text only: a
# system message is prefixed to the first user turn, 'assistant' is spoken as 'model', and the
# roles must alternate. The template writes the BOS itself.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def gguf_file(path: str | Path) -> Path | None:
    """The GGUF file `path` names: the file itself, or the one `.gguf` file in a folder that
    holds no Hugging Face config; None when `path` is not a GGUF checkpoint."""
    path = Path(path)
    if path.is_file():
        return path if path.suffix.lower() == GGUF_SUFFIX else None
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(p for p in path.iterdir() if p.suffix.lower() == GGUF_SUFFIX and p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ModelError(f"{path}: holds several GGUF files ({names}); name one with --model")
    return found[0] if found else None


def require_gguf_support() -> None:
    """A one-line error naming the extra when transformers' GGUF reader cannot run."""
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelError(f"reading a GGUF file needs {' and '.join(missing)}: {EXTRA_HINT}")


def gguf_shape(file: Path) -> tuple[int, int | None]:
    """The decoder layer count (`<arch>.block_count`) and the hidden size
    (`<arch>.embedding_length`, None if absent) in a GGUF file's header, read without loading
    the tensors."""
    require_gguf_support()
    import gguf

    try:
        reader = gguf.GGUFReader(file)
        arch = _text(reader, "general.architecture")
        field = reader.fields[f"{arch}.block_count"]
        layers = int(field.parts[field.data[0]][0])
        width = reader.fields.get(f"{arch}.embedding_length")
        return layers, int(width.parts[width.data[0]][0]) if width is not None else None
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise ModelError(f"{file}: not a readable GGUF model ({exc})") from exc


def _text(reader: Any, key: str) -> str:
    field = reader.fields[key]
    return bytes(field.parts[field.data[0]]).decode()


def load_gguf(file: Path, *, dtype: torch.dtype | None) -> tuple[Any, Any]:
    """(model, tokenizer) from a GGUF file, dequantized to `dtype` (float32 when None)."""
    require_gguf_support()
    # Here, not at the top: the header readers above serve startup checks without torch.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": file.name, "local_files_only": True}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            file.parent, dtype=dtype or torch.float32, **kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(file.parent, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"{file}: cannot load the GGUF model ({exc})") from exc
    _dequantized(model)
    if tokenizer.chat_template is None and model.config.model_type.startswith("gemma"):
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    return model, tokenizer


def _dequantized(model: Any) -> None:
    """Forget that the weights came from a quantized file: they are plain tensors now, and
    `save_pretrained` refuses a model still marked as quantized with GGUF."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def save_folder(model: Any, tokenizer: Any, folder: Path) -> None:
    """Write a loaded model and its tokenizer as a Hugging Face folder (safetensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
