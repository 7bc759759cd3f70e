"""The themed tiny demo build: its features visibly steer the real engine, builds are
bit-identical and reused, and a half-written or foreign folder is never used."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from steering import SaeAttachment, load_model, load_sae, validate_edits
from steering.demo import themes as demo_module
from steering.demo.themes import (
    DEMO_FEATURES,
    DEMO_PROMPTS,
    DEMO_VERSION,
    THEMES,
    DemoAssets,
    build_demo,
    default_demo_dir,
)
from steering.engine import Engine
from steering.requests import GenerationRequest, SamplingParams

THEME_WORDS = {
    "sea": {"sea", "ocean", "waves", "boats", "harbour", "sand", "rocks", "salt", "seaweed"},
    "forest": {"forest", "trees", "moss", "bird", "river", "stones", "branch", "green"},
    "city": {"city", "cars", "music", "street", "streets", "people"},
    "snow": {"snow", "mountains", "white", "cold"},
}
KNOWN_WORDS = {w.lower() for s in sum(THEMES.values(), ()) for w in re.findall(r"[A-Za-z]+", s)}
NEW_TOKENS = 64


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _known_share(text: str) -> float:
    words = _words(text)
    return sum(w in KNOWN_WORDS for w in words) / max(1, len(words))


def _theme_count(text: str, theme: str) -> int:
    return sum(w in THEME_WORDS[theme] for w in _words(text))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoAssets:
    return build_demo(tmp_path_factory.mktemp("demo") / "demo")


@pytest.fixture(scope="module")
def texts(demo: DemoAssets) -> dict[tuple[str, bool, str | None], str]:
    """Greedy text of every demo prompt (plain and chat), unsteered (None) and per feature."""
    lm = load_model(demo.model_dir)
    sae = load_sae(demo.sae_dir)
    engine = Engine.from_loaded(lm, [SaeAttachment(demo.sae_name, sae, demo.layer)])
    handles = {}
    for prompt in demo.prompts:
        for chat in (False, True):
            if chat:
                messages = [{"role": "user", "content": prompt}]
                ids = lm.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, return_dict=True
                )["input_ids"]
            else:
                ids = lm.tokenizer(prompt).input_ids
            for name in (None, *demo.features):
                edits = () if name is None else (demo.features[name].edit(),)
                sampling = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
                request = GenerationRequest(tuple(ids), sampling, edits)
                handles[prompt, chat, name] = engine.add(request)
    while not engine.idle:
        engine.step()
    out = {}
    for key, handle in handles.items():
        tokens: list[int] = []
        while (chunk := handle.channel.take(0)) is not None:
            tokens += chunk.token_ids
        out[key] = lm.tokenizer.decode(tokens, skip_special_tokens=True)
    return out


def test_the_build_loads_with_the_real_loaders(demo: DemoAssets) -> None:
    lm = load_model(demo.model_dir)
    sae = load_sae(demo.sae_dir / "params.safetensors")  # the Gemma Scope 2 format
    assert lm.model.config.model_type == "gemma3_text"
    assert sae.d_model == lm.model.config.hidden_size
    eos = lm.model.generation_config.eos_token_id
    assert set(eos) == {
        lm.tokenizer.eos_token_id,
        lm.tokenizer.convert_tokens_to_ids("<end_of_turn>"),
    }
    edits = [f.edit() for f in DEMO_FEATURES.values()]
    assert validate_edits(edits, {demo.sae_name: sae.d_sae}) == tuple(edits)
    assert all(f.sae == demo.sae_name for f in DEMO_FEATURES.values())


def test_unsteered_text_is_words_and_off_every_theme(
    texts: dict[tuple[str, bool, str | None], str],
) -> None:
    for prompt in DEMO_PROMPTS:
        for chat in (False, True):
            text = texts[prompt, chat, None]
            assert len(_words(text)) >= 12, text
            assert _known_share(text) >= 0.9, text
            for theme in DEMO_FEATURES:
                assert _theme_count(text, theme) <= 1, (theme, text)


@pytest.mark.parametrize("name", list(DEMO_FEATURES))
def test_each_demo_feature_turns_the_text_to_its_theme(
    name: str, texts: dict[tuple[str, bool, str | None], str]
) -> None:
    for prompt in DEMO_PROMPTS:
        for chat in (False, True):
            plain, steered = texts[prompt, chat, None], texts[prompt, chat, name]
            assert steered != plain
            assert _theme_count(steered, name) >= _theme_count(plain, name) + 4, steered
            assert _known_share(steered) >= 0.75, steered


def test_two_builds_are_bit_identical(demo: DemoAssets, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # the build trains on one thread whatever the caller's
    try:
        again = build_demo(tmp_path / "again")
        assert torch.get_num_threads() == threads + 1
    finally:
        torch.set_num_threads(threads)
    files = sorted(p.relative_to(demo.folder) for p in demo.folder.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(again.folder) for p in again.folder.rglob("*") if p.is_file()
    )
    assert Path("model/model.safetensors") in files and Path("sae/params.safetensors") in files
    for name in files:
        assert (demo.folder / name).read_bytes() == (again.folder / name).read_bytes(), name


def test_a_complete_build_is_reused(demo: DemoAssets, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(folder: Path) -> None:
        raise AssertionError("rebuilt a complete demo")

    monkeypatch.setattr(demo_module, "_write", fail)
    before = {p: p.stat().st_mtime_ns for p in demo.folder.rglob("*")}
    assert build_demo(demo.folder) == demo
    assert {p: p.stat().st_mtime_ns for p in demo.folder.rglob("*")} == before


def _fake_write(folder: Path, *, fail: bool = False) -> None:
    (folder / "model").mkdir()
    (folder / "model" / "config.json").write_text("{}")
    if fail:
        raise RuntimeError("the build broke half way")
    (folder / "demo.json").write_text(f'{{"version": {DEMO_VERSION}}}')


def test_a_failed_build_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo_module, "_write", lambda folder: _fake_write(folder, fail=True))
    with pytest.raises(RuntimeError, match="half way"):
        build_demo(tmp_path / "demo")
    assert list(tmp_path.iterdir()) == []


def test_old_or_empty_folders_are_replaced_and_foreign_ones_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo_module, "_write", _fake_write)
    (tmp_path / "empty").mkdir()
    assert (build_demo(tmp_path / "empty").folder / "demo.json").is_file()
    old = tmp_path / "old"
    old.mkdir()
    (old / "demo.json").write_text('{"version": -1}')
    (old / "stale.bin").write_text("x")
    build_demo(old)
    assert not (old / "stale.bin").exists() and (old / "model" / "config.json").is_file()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_demo(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "mine", "old"]


def test_default_demo_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STEERING_DEMO_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_demo_dir() == tmp_path / "steering-server" / f"demo-{DEMO_VERSION}"
    monkeypatch.setenv("STEERING_DEMO_DIR", str(tmp_path / "here"))
    assert default_demo_dir() == tmp_path / "here"
