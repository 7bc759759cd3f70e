"""GGUF checkpoints and the demo's files, without the real model: which file `--model` means,
Gemma's chat template, the shipped SAE and its labels, the demo folder's atomic parts, and the
corpus recipe."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from steering import load_sae
from steering.demo import gemma
from steering.demo.toy import build_tokenizer
from steering.discovery.labels import load_label_file, load_labels
from steering.errors import ModelError
from steering.models import gguf
from steering.models.gguf import GEMMA_CHAT_TEMPLATE, gguf_file, require_gguf_support
from steering.sae.formats import file_sha256
from steering.train import corpus


def test_which_gguf_file_a_model_path_means(tmp_path: Path) -> None:
    one = tmp_path / "one"
    one.mkdir()
    (one / "model.Q4_K_M.gguf").write_bytes(b"")
    (one / "notes.txt").write_text("")
    assert gguf_file(one) == one / "model.Q4_K_M.gguf"
    assert gguf_file(one / "model.Q4_K_M.gguf") == one / "model.Q4_K_M.gguf"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "stray.gguf").write_bytes(b"")
    assert gguf_file(hf) is None  # a Hugging Face folder stays one
    assert gguf_file(tmp_path / "nope") is None
    (one / "other.gguf").write_bytes(b"")
    with pytest.raises(ModelError, match="several GGUF files"):
        gguf_file(one)


def test_reading_gguf_without_the_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a)
    )
    with pytest.raises(ModelError, match=r"needs gguf: install the `gguf` extra"):
        require_gguf_support()


def test_gemmas_chat_template_frames_turns_like_gemma() -> None:
    tokenizer = build_tokenizer()
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": " Hi "},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    with pytest.raises(Exception, match="alternate"):
        tokenizer.apply_chat_template(chat[1:2] * 2, tokenize=False)


def test_the_shipped_sae_matches_its_recorded_sha256_and_labels() -> None:
    params = gemma.SHIPPED_SAE / "params.safetensors"
    record = json.loads((gemma.SHIPPED_SAE / "metrics.json").read_text())
    assert file_sha256(params) == record["params_sha256"] == gemma.SAE_SHA256
    sae = load_sae(params)
    assert (sae.d_model, sae.d_sae) == (640, record["recipe"]["train"]["width"])
    assert sae.d_sae >= 2048
    labels = load_labels(gemma.SHIPPED_SAE / "explanations.json", sae.d_sae)
    live = round((1 - record["metrics"]["dead_fraction"]) * sae.d_sae)
    assert len(labels) == record["labels"] == live  # every feature that fires has a label
    read = load_label_file(gemma.SHIPPED_SAE / "explanations.json", sae.d_sae)
    for feature in gemma.DEMO_FEATURES.values():
        assert labels[feature.feature] == feature.description  # its label, as the SAE ships it
        typical = read.typical_max[feature.feature]  # as the server reads it: maxActApprox
        assert typical < feature.value < 3 * typical  # above its typical maximum, not wildly
    assert torch.isfinite(sae.threshold).all()


def test_the_shipped_labels_carry_steering_features_fields_beside_their_own() -> None:
    """`make demo-features` gave every feature that fired on the held-out passages its
    `maxActApprox` and `frac_nonzero`; the demo's own labelling fields stay."""
    entries = json.loads((gemma.SHIPPED_SAE / "explanations.json").read_text())
    fields = ("description", "maxActivation", "frequency", "topContexts")
    assert all(all(k in e for k in fields) for e in entries)
    given = [e for e in entries if "maxActApprox" in e]
    assert len(given) >= 0.99 * len(entries)
    for e in given:
        assert e["maxActApprox"] > 0 and 0 < e["frac_nonzero"] <= 1
        assert list(e).index("frac_nonzero") == list(e).index("topContexts") - 1
    read = load_label_file(gemma.SHIPPED_SAE / "explanations.json", 1 << 20)
    assert {int(e["index"]): e["maxActApprox"] for e in given}.items() <= read.typical_max.items()
    assert {int(e["index"]): e["frac_nonzero"] for e in given}.items() <= read.frequency.items()


def test_the_demo_sae_part_is_copied_once_and_replaced_when_it_changes(tmp_path: Path) -> None:
    sae_dir = gemma.prepare_sae(tmp_path)
    for name in gemma.SAE_FILES:
        assert (sae_dir / name).read_bytes() == (gemma.SHIPPED_SAE / name).read_bytes()
    marker = (sae_dir / gemma.MARKER).stat().st_mtime_ns
    assert gemma.prepare_sae(tmp_path) == sae_dir
    assert (sae_dir / gemma.MARKER).stat().st_mtime_ns == marker  # reused, not rewritten
    (sae_dir / "explanations.json").write_text("[]")  # a stale copy: its marker no longer holds
    (sae_dir / gemma.MARKER).write_text(json.dumps({"sha256": {}}))
    gemma.prepare_sae(tmp_path)
    assert (sae_dir / "explanations.json").read_bytes() == (
        gemma.SHIPPED_SAE / "explanations.json"
    ).read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_the_demo_without_its_package_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gemma, "_package", lambda: None)
    assert not gemma.demo_available(tmp_path)
    with pytest.raises(ModelError, match=r"the `demo` extra"):
        gemma.prepare_demo(tmp_path)
    assert not (tmp_path / "model").exists()
    (tmp_path / "model").mkdir()  # a model converted earlier still serves without the package
    (tmp_path / "model" / gemma.MARKER).write_text("{}")
    assert gemma.demo_available(tmp_path)


def test_converting_the_demo_model_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class Package:  # the GGUF package, without its 250 MB
        EXPECTED_SHA256 = "0" * 64

        @staticmethod
        def assemble(path: Path) -> Path:
            path.write_bytes(b"gguf")
            return path

    monkeypatch.setattr(gemma, "_package", lambda: Package)
    # the demo imports the GGUF reader when it converts: patch it where it lives
    monkeypatch.setattr(gguf, "load_gguf", lambda path, dtype: (None, None))
    monkeypatch.setattr(gguf, "save_folder", lambda model, tokenizer, folder: None)
    assert not gemma.model_converted(tmp_path)
    with caplog.at_level("INFO", logger=gemma.__name__):
        gemma.prepare_model(tmp_path)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2
    assert said[0].startswith("converting Gemma 3 270M from its GGUF")
    assert said[1].startswith("converted Gemma 3 270M in")
    assert gemma.model_converted(tmp_path)
    caplog.clear()
    with caplog.at_level("INFO", logger=gemma.__name__):
        gemma.prepare_model(tmp_path)  # converted already: nothing to say
    assert caplog.records == []


def test_the_corpus_reads_wordnet_glosses_by_topic_and_splits_by_document(tmp_path: Path) -> None:
    data = tmp_path / "wordnet" / "usr" / "share" / "wordnet"
    data.mkdir(parents=True)
    lines = ["  1 This software and database is being provided ... licence header"]
    for i in range(30):
        topic = "17" if i % 2 else "05"
        lines.append(f'{i:08d} {topic} n 02 sea_{i} 0 ocean 0 000 | a gloss {i}; "an example"  ')
    (data / "data.noun").write_text("\n".join(lines) + "\n")
    for pos in ("verb", "adj", "adv"):
        (data / f"data.{pos}").write_text("")
    docs = list(corpus._wordnet(tmp_path))
    assert [d.id for d in docs] == ["noun.05/0", "noun.05/12", "noun.17/0", "noun.17/12"]
    assert docs[0].text.splitlines()[0] == 'sea 0, ocean: a gloss 0; "an example"'
    assert all(len(d.text.splitlines()) <= corpus.GLOSSES_PER_DOCUMENT for d in docs)
    many = [corpus.Document("sotu", str(i), "") for i in range(2000)]
    share = sum(d.held_out for d in many) / len(many)
    assert 0.07 < share < 0.13  # a tenth, by a hash of the id: the same on every machine
    assert [d.held_out for d in many] == [
        corpus.Document("sotu", str(i), "other text").held_out for i in range(2000)
    ]
