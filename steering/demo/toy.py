"""Tiny Gemma models, tokenizers and SAEs built locally, in the real on-disk formats.

For tests, benchmarks and the demo: nothing is downloaded. Models are random-weight Gemma 2 /
Gemma 3 (text and multimodal) saved with `save_pretrained`; the tokenizer is a byte-level BPE
trained on a small built-in corpus, with Gemma's special tokens and chat template.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3Config,
    Gemma3TextConfig,
    GenerationConfig,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)

from steering.sae.jumprelu import JumpReLUSAE

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")
PAD_ID, EOS_ID, BOS_ID = 0, 1, 2
TURN_MARKERS = ("<start_of_turn>", "<end_of_turn>")

# Gemma's chat template, reduced: 'assistant' is spoken as 'model', other roles are refused.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{% if role not in ['user', 'model', 'system'] %}"
    "{{ raise_exception('unknown chat role: ' + role) }}{% endif %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

CORPUS = (
    "The sea was calm and blue, and the boats drifted slowly toward the harbour.",
    "Waves broke on the rocks; the ocean smelled of salt and seaweed.",
    "In the forest the trees were tall, the moss was green and the air was cool.",
    "A small bird sang on a branch while the river ran over smooth stones.",
    "The city at night is loud: cars, music, people talking on every street.",
    "She wrote a long letter to her friend about the mountains and the snow.",
    "Thank you so much, that is wonderful news! I am very happy for you.",
    "This is terrible, I hate it, everything about it is awful and stupid.",
    "Please explain how a sparse autoencoder reads the residual stream of a model.",
    "Tell me about the sea. Tell me a story about a dragon and a knight.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Punctuation: , . ; : ! ? ( ) ' \" -",
    "Café, naïve, über, señor, 東京, 😀 — text beyond ASCII still round-trips.",
)


def build_tokenizer(
    vocab_size: int = 512, *, turn_markers_listed: bool = True
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Gemma's special tokens, BOS added, and chat template.

    With `turn_markers_listed=False` the tokenizer is shaped like one converted from GGUF:
    `<start_of_turn>` / `<end_of_turn>` stay added tokens flagged special (same ids, still
    single tokens in the chat template) but are absent from `all_special_ids`.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(CORPUS) * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS_ID)]
    )
    # The trainer already registers every SPECIAL_TOKENS entry as an added token with
    # special=True; listing the turn markers as extra special tokens only names them.
    listed = {"extra_special_tokens": list(TURN_MARKERS)} if turn_markers_listed else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
        **listed,
    )


def _gemma2(vocab: int, **kw: Any) -> Gemma2Config:
    base: dict[str, Any] = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=16, max_position_embeddings=512,
    )  # fmt: skip
    return Gemma2Config(vocab_size=vocab, **(base | kw), **_ids())


def _gemma3_text(vocab: int, **kw: Any) -> Gemma3TextConfig:
    # Six layers, so that one global-attention layer exists (5 local : 1 global).
    base: dict[str, Any] = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=16, max_position_embeddings=512,
    )  # fmt: skip
    return Gemma3TextConfig(vocab_size=vocab, **(base | kw), **_ids())


def _gemma3_multimodal(vocab: int, **kw: Any) -> Gemma3Config:
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=8,
    )  # fmt: skip
    return Gemma3Config(
        text_config=_gemma3_text(vocab, **kw), vision_config=vision, mm_tokens_per_image=4
    )


def _ids() -> dict[str, int]:
    return {"pad_token_id": PAD_ID, "eos_token_id": EOS_ID, "bos_token_id": BOS_ID}


FAMILIES = {"gemma2": _gemma2, "gemma3": _gemma3_text, "gemma3_multimodal": _gemma3_multimodal}


def build_model_folder(
    folder: str | Path,
    family: str = "gemma2",
    *,
    seed: int = 0,
    turn_markers_listed: bool = True,
    **config: Any,
) -> Path:
    """Save a random-weight tiny Gemma and its tokenizer as a Hugging Face folder.

    `config` overrides the text config (e.g. hidden_size=512, num_hidden_layers=8);
    `turn_markers_listed=False` saves the GGUF-converted tokenizer shape (see build_tokenizer).
    """
    out = Path(folder)
    tokenizer = build_tokenizer(turn_markers_listed=turn_markers_listed)
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    model = build_model(family, len(tokenizer), seed=seed, **config)
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_ID, pad_token_id=PAD_ID, eos_token_id=[EOS_ID, end_of_turn]
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_model(family: str, vocab_size: int, *, seed: int = 0, **config: Any) -> Any:
    """A random-weight Gemma of `family` in memory, float32, eval mode (seeded, no global RNG)."""
    model_config = FAMILIES[family](vocab_size, **config)
    if family == "gemma2":
        model_config._attn_implementation = "eager"  # Gemma 2 soft-caps attention scores
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(model_config).eval()


def random_sae(d_model: int, d_sae: int, *, seed: int = 0, threshold: float = 0.05) -> JumpReLUSAE:
    """A random JumpReLU SAE; thresholds spread around `threshold` so some features fire."""
    gen = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(d_sae, d_model, generator=gen)
    return JumpReLUSAE(
        W_enc=torch.randn(d_model, d_sae, generator=gen) / math.sqrt(d_model),
        W_dec=w_dec / w_dec.norm(dim=1, keepdim=True),
        b_enc=0.02 * torch.randn(d_sae, generator=gen),
        b_dec=0.02 * torch.randn(d_model, generator=gen),
        threshold=threshold * (0.5 + torch.rand(d_sae, generator=gen)),
    )
