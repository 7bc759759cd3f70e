"""Never-steered ids: every token the tokenizer marks special, turn markers of GGUF tokenizers too.

A Gemma 3 tokenizer converted from GGUF flags `<start_of_turn>` / `<end_of_turn>` special only as
added tokens, not in `all_special_ids`; `build_tokenizer(turn_markers_listed=False)` mimics it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from steering import EditMode, FeatureEdit, LoadedModel, SaeAttachment, load_model
from steering.demo.toy import BOS_ID, build_model_folder, build_tokenizer, random_sae
from steering.engine import Engine
from steering.models.gemma import special_token_ids
from steering.requests import FinishReason, GenerationRequest, SamplingParams
from tests.reference import reference_greedy

MARKERS = ("<start_of_turn>", "<end_of_turn>")
CHAT = [{"role": "user", "content": "Tell me about the sea"}]
NEW_TOKENS = 8
# Per family, an edit under which steering the chat prompt's three marker positions too already
# changes the first greedy token (found by trial: on most features the markers barely matter).
EDITS = {
    "gemma2": FeatureEdit("mid", 6, EditMode.SET, 30.0),
    "gemma3": FeatureEdit("mid", 3, EditMode.SET, 20.0),
}


def _marker_ids(tokenizer: object) -> set[int]:
    return {tokenizer.convert_tokens_to_ids(m) for m in MARKERS}  # type: ignore[attr-defined]


def test_gguf_style_tokenizer_flags_turn_markers_special_only_as_added_tokens() -> None:
    tokenizer = build_tokenizer(turn_markers_listed=False)
    markers = _marker_ids(tokenizer)
    assert markers == {4, 5}  # same ids as the default tokenizer
    assert not markers & set(tokenizer.all_special_ids)
    assert all(tokenizer.added_tokens_decoder[i].special for i in markers)


def test_special_ids_include_turn_markers_of_a_gguf_style_tokenizer() -> None:
    tokenizer = build_tokenizer(turn_markers_listed=False)
    assert special_token_ids(tokenizer) == [0, 1, 2, 3, 4, 5]
    loaded = LoadedModel(model=None, tokenizer=tokenizer)
    assert loaded.special_ids.tolist() == [0, 1, 2, 3, 4, 5]


def test_special_ids_of_the_default_tokenizer_are_its_listed_special_ids() -> None:
    tokenizer = build_tokenizer()
    assert sorted(tokenizer.all_special_ids) == [0, 1, 2, 3, 4, 5]
    assert special_token_ids(tokenizer) == [0, 1, 2, 3, 4, 5]
    assert LoadedModel(model=None, tokenizer=tokenizer).special_ids.tolist() == [0, 1, 2, 3, 4, 5]


@pytest.fixture(scope="module", params=sorted(EDITS))
def gguf_style(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, FeatureEdit]:
    """A tiny Gemma folder saved with the GGUF-shaped tokenizer, and its family's edit."""
    folder = tmp_path_factory.mktemp(f"gguf_{request.param}")
    path = build_model_folder(folder, request.param, seed=3, turn_markers_listed=False)
    return path, EDITS[request.param]


def _chat_prompt(lm: LoadedModel) -> list[int]:
    encoded = lm.tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    return list(encoded["input_ids"])


def _engine_tokens(
    lm: LoadedModel, attachment: SaeAttachment, prompt: list[int], edit: FeatureEdit
) -> list[int]:
    engine = Engine.from_loaded(lm, [attachment])
    sampling = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    handle = engine.add(GenerationRequest(tuple(prompt), sampling, (edit,)))
    for _ in range(100):
        if engine.idle:
            break
        engine.step()
    tokens, reason = [], None
    while (out := handle.channel.take(0)) is not None:
        tokens += out.token_ids
        reason = out.finish_reason or reason
    assert reason is FinishReason.LENGTH
    return tokens


def test_engine_never_steers_turn_markers_of_a_gguf_style_tokenizer(
    gguf_style: tuple[Path, FeatureEdit],
) -> None:
    folder, edit = gguf_style
    lm = load_model(folder, dtype=torch.float32)
    markers = _marker_ids(lm.tokenizer)
    listed = set(lm.tokenizer.all_special_ids)
    assert BOS_ID in listed and not markers & listed  # the GGUF shape survives save + load
    prompt = _chat_prompt(lm)
    assert prompt[0] == BOS_ID and sum(t in markers for t in prompt) == 3

    config = lm.model.config.get_text_config()
    layer = config.num_hidden_layers // 2
    attachment = SaeAttachment("mid", random_sae(config.hidden_size, 64, seed=4), layer=layer)
    got = _engine_tokens(lm, attachment, prompt, edit)

    def reference(special_ids: set[int]) -> list[int]:
        return reference_greedy(
            lm.model, prompt, attachment.sae, layer, [edit], NEW_TOKENS, special_ids=special_ids
        )

    assert got == reference(listed | markers)  # BOS and turn markers left alone
    assert got != reference(listed)  # steering the markers too would show
