"""`make demo-features`' two steps of its own: the held-out passages it reads and the merge of
`steering-features`' fields into the demo's label file."""

from __future__ import annotations

import json
from pathlib import Path

from steering.demo.toy import build_tokenizer
from steering.train import corpus
from steering.train.demo_features import PASSAGE_TOKENS, main, merge, passages


def _held_out(source: str, text: str) -> corpus.Document:
    doc = next(
        d for i in range(1000) if (d := corpus.Document(source, str(i), text)).held_out
    )  # fmt: skip
    return doc


def test_passages_are_held_out_sentences_within_the_window_one_line_each() -> None:
    tokenizer = build_tokenizer()
    sentence = "The whale rose from the sea and the boats went after it."
    long_doc = _held_out("moby-dick", "\n".join([" ".join([sentence] * 3)] * 8))
    glosses = _held_out("wordnet", "sea: a division of an ocean\nshore: the land along a sea")
    trained = next(
        d for i in range(1000) if not (d := corpus.Document("sotu", str(i), "Not read.")).held_out
    )
    out = list(passages([long_doc, glosses, trained], tokenizer))
    assert out[-1] == "sea: a division of an ocean shore: the land along a sea"  # one document
    assert all("Not read" not in p for p in out)  # the training split is left out
    assert all("\n" not in p and p == p.strip() for p in out)
    assert all(len(tokenizer(p).input_ids) <= PASSAGE_TOKENS for p in out)
    assert len(out) > 2  # the long document is cut
    words = " ".join(out[:-1]).split()
    assert words == long_doc.text.split()  # every word, in order, nothing lost


def test_a_sentence_longer_than_the_window_is_a_passage_of_its_own() -> None:
    tokenizer = build_tokenizer()
    long = " ".join(["word"] * (2 * PASSAGE_TOKENS))
    doc = _held_out("sotu", f"Short one. {long}. Short two.")
    assert list(passages([doc], tokenizer)) == ["Short one.", f"{long}.", "Short two."]


def test_merge_adds_the_tools_fields_and_keeps_the_demos_own() -> None:
    shipped = [
        {"index": "0", "description": "sea", "maxActivation": 324.5, "frequency": 0.01,
         "topContexts": ["the [[sea]]"]},
        {"index": "1", "description": "war", "maxActivation": 10.0, "frequency": 0.02,
         "maxActApprox": 1.0, "topContexts": []},
        {"index": "2", "description": "never fired", "maxActivation": 3.0},
    ]  # fmt: skip
    described = [
        {"index": "0", "description": "other words", "maxActApprox": 400.25,
         "frac_nonzero": 0.02, "topContexts": ["other"]},
        {"index": "1", "description": "x", "maxActApprox": 12.5, "frac_nonzero": 0.03},
    ]  # fmt: skip
    merged = merge(shipped, described)
    assert merged[0] == {
        "index": "0", "description": "sea", "maxActivation": 324.5, "frequency": 0.01,
        "maxActApprox": 400.25, "frac_nonzero": 0.02, "topContexts": ["the [[sea]]"],
    }  # fmt: skip
    assert list(merged[0]) == [
        "index", "description", "maxActivation", "frequency", "maxActApprox", "frac_nonzero",
        "topContexts",
    ]  # fmt: skip
    assert merged[1]["maxActApprox"] == 12.5 and merged[1]["description"] == "war"  # replaced
    assert merged[2] == shipped[2]  # not in the tool's output: as it was
    assert merge(merged, described) == merged  # merging again changes nothing


def test_merge_writes_the_file_in_its_own_style(tmp_path: Path) -> None:
    labels = tmp_path / "explanations.json"
    labels.write_text(json.dumps([{"index": "5", "description": "d", "topContexts": []}], indent=0))
    features = tmp_path / "features.json"
    features.write_text(json.dumps([{"index": "5", "maxActApprox": 2.5, "frac_nonzero": 0.1}]))
    assert main(["merge", str(features), "--into", str(labels)]) == 0
    expected = [{"index": "5", "description": "d", "maxActApprox": 2.5, "frac_nonzero": 0.1,
                 "topContexts": []}]  # fmt: skip
    assert labels.read_text() == json.dumps(expected, indent=0) + "\n"
