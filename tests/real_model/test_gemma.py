"""The real Gemma 3 270M: served from its GGUF exactly, chat framed right, and the demo SAE's
"sea" feature, found by search, steering neutral prompts to the sea."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from steering import LoadedModel
from steering.demo.gemma import DEMO_FEATURES, SAE_NAME, DemoAssets
from steering.discovery.catalog import Catalog
from steering.discovery.labels import load_label_file, load_labels
from steering.edits import EditMode, FeatureEdit
from steering.engine import Engine
from steering.requests import FinishReason
from tests.real_model.conftest import gguf_path, greedy

pytestmark = pytest.mark.real_model

PROMPTS = ["The capital of France is", "My favourite recipe for a quick dinner is"]
NEUTRAL = [
    "My favourite breakfast is",
    "The meeting tomorrow will cover",
    "When I opened the box, I found",
    "The last time I went to the library,",
    "Yesterday my friend told me that",
]
SEA_WORDS = {
    "sea", "seas", "ocean", "oceans", "wave", "waves", "ship", "ships", "boat", "boats", "sail",
    "sails", "sailing", "sailor", "sailors", "whale", "whales", "shore", "beach", "harbor",
    "harbour", "tide", "voyage", "island", "coast", "deck", "captain", "crew", "marine",
    "fishing", "fish", "water", "waters", "seaside", "ashore", "vessel", "mast", "nautical",
}  # fmt: skip


def _sea_words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower())) & SEA_WORDS


def test_the_gguf_served_equals_hugging_face_greedy(
    engine: Engine, gemma: LoadedModel, tmp_path: Path
) -> None:
    """The converted folder, served by the engine (prompts of different lengths in one batch),
    gives exactly the tokens that transformers' own GGUF loading and `generate` give."""
    gguf = gguf_path(tmp_path)
    reference = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    ).eval()
    ids = [gemma.tokenizer(p).input_ids for p in PROMPTS]
    served = greedy(engine, ids, 12)
    for prompt, (tokens, _) in zip(ids, served, strict=True):
        with torch.no_grad():
            out = reference.generate(
                torch.tensor([prompt]), max_new_tokens=12, do_sample=False, min_new_tokens=12
            )
        assert tokens == out[0, len(prompt) :].tolist()


def test_the_converted_tokenizer_chats_like_gemma(gemma: LoadedModel) -> None:
    """The GGUF carries no chat template: the conversion gave it Gemma's."""
    text = gemma.tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_chat_has_one_bos_and_stops_at_end_of_turn(engine: Engine, gemma: LoadedModel) -> None:
    """One BOS, and `<end_of_turn>` ends a generation. The base 270M never writes the marker
    itself (its logit sits near -14 after an answer), so the head is nudged toward it for the
    third token, as a chat-tuned model would choose it."""
    tok = gemma.tokenizer
    chat = [
        {"role": "user", "content": "Answer with one word: what colour is the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Answer with one word: what colour is grass?"},
    ]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    end_of_turn = tok.convert_tokens_to_ids("<end_of_turn>")
    assert {end_of_turn, tok.eos_token_id} <= engine.eos_ids
    [(free, finish)] = greedy(engine, [ids], 6, ignore_eos=False)
    assert end_of_turn not in free and finish is FinishReason.LENGTH
    heads = []  # one call per token: the prefill's, then each decode step's

    def nudge(module: object, args: object, logits: torch.Tensor) -> torch.Tensor:
        heads.append(1)
        if len(heads) == 3:
            logits = logits.clone()
            logits[..., end_of_turn] += 1e4
        return logits

    handle = gemma.model.get_output_embeddings().register_forward_hook(nudge)
    try:
        [(tokens, finish)] = greedy(engine, [ids], 40, ignore_eos=False)
    finally:
        handle.remove()
    assert tokens == [*free[:2], end_of_turn] and finish is FinishReason.EOS


def _steered(engine: Engine, gemma: LoadedModel, edit: FeatureEdit | None) -> list[str]:
    ids = [gemma.tokenizer(p).input_ids for p in NEUTRAL]
    edits = [edit] if edit is not None else []
    return [gemma.tokenizer.decode(t) for t, _ in greedy(engine, ids, 24, edits)]


def test_the_demo_feature_is_found_by_search_and_changes_every_prompt(
    engine: Engine, gemma: LoadedModel, demo: DemoAssets
) -> None:
    labels = load_labels(demo.sae_dir / "explanations.json", 1 << 20)
    catalog = Catalog({SAE_NAME: labels})
    plain = _steered(engine, gemma, None)
    for feature in DEMO_FEATURES.values():
        word = feature.description.split(", ")[0]
        assert feature.feature in [m.feature for m in catalog.search(word, limit=5)]
        steered = _steered(engine, gemma, feature.edit())
        assert all(s != p for s, p in zip(steered, plain, strict=True)), steered


def test_the_sea_feature_is_found_by_search_and_steers_to_the_sea(
    engine: Engine, gemma: LoadedModel, demo: DemoAssets
) -> None:
    """Search "sea" and, as a reader of the results would, take the label most about the sea
    (the most words of the sea's vocabulary; ties to the better-ranked); set that feature to a
    few times its typical maximum activation."""
    read = load_label_file(demo.sae_dir / "explanations.json", 1 << 20)
    hits = Catalog({SAE_NAME: read.labels}).search("sea", limit=10)
    sea = max(hits, key=lambda hit: len(_sea_words(hit.label)))
    typical = read.typical_max[sea.feature]  # as the server reads it: maxActApprox first
    plain = _steered(engine, gemma, None)
    assert not any(_sea_words(text) for text in plain), plain
    for times in (2, 4, 8):
        edit = FeatureEdit(SAE_NAME, sea.feature, EditMode.SET, times * typical)
        turned = [text for text in _steered(engine, gemma, edit) if _sea_words(text)]
        if len(turned) >= 3:
            return
    raise AssertionError("no setting of the 'sea' feature put sea words into 3 of 5 prompts")
