"""The feature-label catalog: label files, the stemmer, and the ranking of `Catalog.search`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import pytest

import steering.discovery.catalog as catalog_module
from steering.discovery.catalog import Catalog, FeatureMatch
from steering.discovery.labels import (
    MAX_LABEL_CHARS,
    LabelFileError,
    labels_beside,
    load_label_file,
    load_labels,
)
from steering.discovery.words import stem, terms, words
from steering.errors import InvalidRequestError, SteeringError

D_SAE = 100


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def keys(matches: list[FeatureMatch]) -> list[tuple[str, int]]:
    return [(m.sae, m.feature) for m in matches]


# ---------------------------------------------------------------------------- label files


def test_reads_a_neuronpedia_export(tmp_path: Path) -> None:
    entries = [
        {"modelId": "gemma-2-2b", "layer": "12-gemmascope-res-16k", "index": "7",
         "description": "  ocean waves \n", "explanationModelName": "gpt-4o-mini"},
        {"index": 3, "description": "legal documents", "typeName": "oai_token-act-pair"},
        {"index": "7", "description": "a later description of 7"},
        {"index": "9", "description": "   "},  # empty after trimming: ignored
        {"index": "9", "description": "nine, second entry"},
        {"index": "11", "description": None},
    ]  # fmt: skip
    file = write(tmp_path / "explanations.json", json.dumps(entries, indent=2))
    assert load_labels(file, D_SAE) == {
        7: "ocean waves",
        3: "legal documents",
        9: "nine, second entry",
    }
    assert load_labels(str(file), D_SAE) == load_labels(file, D_SAE)


def test_reads_typical_maxima_and_frequencies(tmp_path: Path) -> None:
    entries = [
        {"index": "1", "description": "one", "maxActApprox": 12.5, "frac_nonzero": 0.01},
        {"index": "2", "description": "two", "maxActivation": "3.25", "frequency": 0.5},
        {"index": "3", "description": "three", "maxActApprox": 0, "frac_nonzero": 0},
        {"index": "4", "description": "four", "maxActApprox": -2.0, "frequency": 1.5},
        {"index": "5", "description": "five", "maxActApprox": "inf", "frac_nonzero": "nan"},
        {"index": "6", "description": "six", "maxActApprox": "NaN", "maxActivation": 7.0},
        {"index": "7", "description": None, "maxActApprox": True, "frequency": [0.1]},
        {"index": "8", "description": None, "maxActApprox": 9.0},  # no label, a maximum
        {"index": "1", "description": "later", "maxActApprox": 99.0, "frac_nonzero": 0.9},
    ]  # fmt: skip
    read = load_label_file(write(tmp_path / "explanations.json", json.dumps(entries)), D_SAE)
    assert read.typical_max == {1: 12.5, 2: 3.25, 6: 7.0, 8: 9.0}
    assert read.frequency == {1: 0.01, 2: 0.5}
    assert read.labels == {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
    lines = write(
        tmp_path / "labels.jsonl",
        '{"feature": 4, "label": "x", "maxActivation": 2.0, "frequency": 0.25}\n'
        '{"feature": 5, "label": "y", "maxActApprox": 1e400}\n',
    )
    read = load_label_file(lines, D_SAE)
    assert (read.typical_max, read.frequency) == ({4: 2.0}, {4: 0.25})


def test_search_results_carry_typical_max_and_frequency() -> None:
    catalog = Catalog(
        {"a": {1: "sea waves", 2: "sea"}},
        typical_max={"a": {1: 40.0, 3: 5.0}},
        frequency={"a": {1: 0.002}},
    )
    by_feature = {m.feature: m for m in catalog.search("sea")}
    assert (by_feature[1].typical_max, by_feature[1].frequency) == (40.0, 0.002)
    assert (by_feature[2].typical_max, by_feature[2].frequency) == (0.0, 0.0)
    assert catalog.typical_max("a", 3) == 5.0  # unlabelled features keep their maximum
    assert catalog.typical_max("a", 2) == catalog.typical_max("b", 1) == 0.0


def test_reads_json_lines(tmp_path: Path) -> None:
    lines = [
        '{"feature": 4, "label": " sea and ships ", "score": 0.9}',
        "",
        '{"feature": "5", "label": "python code"}',
        '{"feature": 4, "label": "not the first"}',
        '{"feature": 6, "label": ""}',
        '{"feature": 6, "label": "six"}',
        "   ",
    ]
    file = write(tmp_path / "labels.jsonl", "\n".join(lines) + "\n")
    assert load_labels(file, D_SAE) == {4: "sea and ships", 5: "python code", 6: "six"}


def test_format_is_detected_by_content(tmp_path: Path) -> None:
    array_file = write(tmp_path / "a.jsonl", '\n  [{"index": "1", "description": "one"}]')
    lines_file = write(tmp_path / "b.json", '{"feature": 1, "label": "one"}')
    assert load_labels(array_file, D_SAE) == load_labels(lines_file, D_SAE) == {1: "one"}
    assert load_labels(write(tmp_path / "empty.jsonl", "\n"), D_SAE) == {}
    assert load_labels(write(tmp_path / "empty.json", "[]"), D_SAE) == {}


BAD_ARRAYS = {
    "out of range": ('[{"index": "1", "description": "a"}, {"index": "100", "description": "b"}]',
                     "entry [1]", "outside [0, 100)"),
    "negative": ('[{"index": -1, "description": "a"}]', "entry [0]", "outside"),
    "fractional string": ('[{"index": "3.5", "description": "a"}]', "entry [0]", "not an integer"),
    "float": ('[{"index": 3.0, "description": "a"}]', "entry [0]", "not an integer"),
    "word": ('[{"index": "seven", "description": "a"}]', "entry [0]", "not an integer"),
    "bool": ('[{"index": true, "description": "a"}]', "entry [0]", "not an integer"),
    "no index": ('[{"description": "a"}]', "entry [0]", "'index'"),
    "not an object": ('[{"index": "1", "description": "a"}, 5]', "entry [1]", "object"),
    "label not text": ('[{"index": "1", "description": 5}]', "entry [0]", "not a string"),
    "malformed": ('[{"index": "1", "description": "a"},\n {"index": ', "line 2", "malformed"),
    "lone surrogate": ('[{"index": "1", "description": "\\ud800 sea"}]', "entry [0]",
                       "lone surrogate"),
    "index of 5,000 digits": ('[{"index": "' + "9" * 5000 + '", "description": "a"}]',
                              "entry [0]", "5000 digits"),
    "number of 5,000 digits": ('[{"index": ' + "9" * 5000 + ', "description": "a"}]',
                               "entry [0]", "5000 digits"),
    "nested too deeply": ("[" * 100_000 + "]" * 100_000, "", "nested too deeply"),
}  # fmt: skip

BAD_LINES = {
    "out of range": ('{"feature": 1, "label": "a"}\n{"feature": 100, "label": "b"}', ":2:",
                     "outside [0, 100)"),
    "non-integer": ('{"feature": 1, "label": "a"}\n\n{"feature": "x1", "label": "b"}', ":3:",
                    "not an integer"),
    "malformed": ('{"feature": 1, "label": "a"}\n{"feature": 2, "label": "b"', ":2:",
                  "malformed"),
    "no label": ('{"feature": 1}', ":1:", "'label'"),
    "not an object": ('{"feature": 1, "label": "a"}\n"text"', ":2:", "object"),
    "lone surrogate": ('{"feature": 1, "label": "a \\udfff"}', ":1:", "lone surrogate"),
    "number of 5,000 digits": ('{"feature": ' + "1" * 5000 + ', "label": "a"}', ":1:",
                               "5000 digits"),
    "nested too deeply": ('{"feature": 1, "label": ' + "[" * 100_000 + "]" * 100_000 + "}",
                          ":1:", "nested too deeply"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_ARRAYS))
def test_a_bad_array_names_the_file_and_entry(tmp_path: Path, case: str) -> None:
    text, where, why = BAD_ARRAYS[case]
    file = write(tmp_path / "explanations.json", text)
    with pytest.raises(LabelFileError) as caught:
        load_labels(file, D_SAE)
    assert str(file) in str(caught.value)
    assert where in str(caught.value) and why in str(caught.value)
    assert isinstance(caught.value, SteeringError)


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_a_bad_line_names_the_file_and_line(tmp_path: Path, case: str) -> None:
    text, where, why = BAD_LINES[case]
    file = write(tmp_path / "labels.jsonl", text)
    with pytest.raises(LabelFileError) as caught:
        load_labels(file, D_SAE)
    assert f"{file}{where}" in str(caught.value) and why in str(caught.value)


def test_a_bad_label_is_one_line(tmp_path: Path) -> None:
    """A 5,000-digit index is named by its length, not printed whole."""
    file = write(
        tmp_path / "explanations.json", '[{"index": "' + "9" * 5000 + '", "description": "a"}]'
    )
    with pytest.raises(LabelFileError) as caught:
        load_labels(file, D_SAE)
    assert "9" * 100 not in str(caught.value) and "\n" not in str(caught.value)


def test_long_labels_are_cut_at_the_documented_maximum(tmp_path: Path) -> None:
    long = "sea " * 200
    file = write(tmp_path / "labels.jsonl", json.dumps({"feature": 1, "label": long}))
    (label,) = load_labels(file, D_SAE).values()
    assert len(label) == MAX_LABEL_CHARS and label.endswith("…")
    assert label.startswith("sea sea") and long.startswith(label[:-1])


def test_a_missing_or_unreadable_file_names_the_file(tmp_path: Path) -> None:
    for file in (tmp_path / "nope.json", tmp_path):  # missing; a folder
        with pytest.raises(LabelFileError, match="cannot read") as caught:
            load_labels(file, D_SAE)
        assert str(file) in str(caught.value)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(LabelFileError, match=r"binary\.json"):
        load_labels(binary, D_SAE)


def test_labels_beside_finds_explanations_next_to_the_parameters(tmp_path: Path) -> None:
    params = tmp_path / "layer_12" / "params.npz"
    params.parent.mkdir()
    params.write_bytes(b"")
    assert labels_beside(params) is None
    explanations = write(params.parent / "explanations.json", "[]")
    assert labels_beside(params) == explanations
    assert labels_beside(params.parent) == explanations  # a SAELens-style folder works too
    assert labels_beside(tmp_path / "elsewhere" / "params.npz") is None


# ---------------------------------------------------------------------------- words and stems

STEMS = {
    # plurals
    "oceans": "ocean", "waves": "wave", "stories": "story", "boxes": "box", "ships": "ship",
    "glasses": "glass", "churches": "church", "wishes": "wish", "ties": "tie", "days": "day",
    "ideas": "idea", "1990s": "1990",
    # -ed / -ing
    "sailing": "sail", "sailed": "sail", "making": "make", "waving": "wave", "running": "run",
    "stopped": "stop", "hoped": "hope", "hopping": "hop", "related": "relate", "falling": "fall",
    "played": "play", "agreed": "agree", "carried": "carry", "tied": "tie", "boxed": "box",
    # left alone: short words, words that only look inflected
    "sea": "sea", "is": "is", "bus": "bus", "glass": "glass", "gas": "gas", "its": "its",
    "this": "this", "analysis": "analysis", "virus": "virus", "sing": "sing", "thing": "thing",
    "string": "string", "being": "being", "bed": "bed", "red": "red", "need": "need",
    "speed": "speed", "aged": "aged", "ocean": "ocean", "s": "s", "": "",
}  # fmt: skip


@pytest.mark.parametrize("word", sorted(STEMS))
def test_stem(word: str) -> None:
    assert stem(word) == STEMS[word]
    assert stem(STEMS[word]) == STEMS[word]  # a stem is its own stem


def test_words_are_case_folded_unicode_and_split_at_underscores() -> None:
    assert words("Ocean_waves, CAFÉ's 3D-print  Straße") == [
        "ocean", "waves", "café", "s", "3d", "print", "strasse"
    ]  # fmt: skip
    assert words("!!! — ___") == []
    assert terms("Sailing SHIPS") == ["sail", "ship"]


# ---------------------------------------------------------------------------- search


def test_exact_label_first_then_phrases_then_words() -> None:
    catalog = Catalog({"sae": {
        0: "waves of the ocean", 1: "ocean waves crashing", 2: "Ocean waves!",
        3: "waves ocean storm", 4: "ocean", 5: "weather", 6: "the big ocean waves",
    }})  # fmt: skip
    found = catalog.search("ocean waves")
    assert [m.feature for m in found] == [2, 1, 6, 0, 3, 4]
    assert [m.score for m in found[:5]] == pytest.approx([3.0, 2 + 1 / 3, 2.25, 1.0, 1.0])
    assert 0 < found[5].score < 1.0
    assert found[0] == FeatureMatch("sae", 2, "Ocean waves!", 3.0)
    # A phrase label outranks word-only labels even when they sit at lower indices.
    assert [m.feature for m in catalog.search("waves ocean")] == [3, 0, 1, 2, 6, 4]


def test_a_label_mostly_the_query_beats_one_that_mentions_it_last() -> None:
    # Phrase labels rank by the share of their words that are query words, then by where the
    # query's words first come; the score says the share (2 + share / 2).
    catalog = Catalog({"sae": {
        0: "ships harbours and the sea", 1: "sea waves", 2: "waves sea", 3: "the sea ships",
        4: "sea of ships",
    }})  # fmt: skip
    found = catalog.search("sea")
    assert [m.feature for m in found] == [1, 2, 4, 3, 0]
    assert [m.score for m in found] == pytest.approx([2.25, 2.25, 2 + 1 / 6, 2 + 1 / 6, 2.1])


def test_the_query_is_normalised_like_the_labels() -> None:
    catalog = Catalog({"sae": {0: "Sailing ships", 1: "ships sailing", 2: "a ship"}})
    found = catalog.search("  SAILED, ship!! ")
    assert [(m.feature, m.score) for m in found] == [(0, 3.0), (1, 1.0), (2, found[2].score)]


def test_odd_labels_are_indexed_like_any_other() -> None:
    long = " ".join(["filler"] * 70_000)  # positions beyond 16 bits
    catalog = Catalog({"sae": {0: "sea\x00ships", 1: f"{long} sea ships", 2: "", 3: "_ _"}})
    found = catalog.search("Sea ships")
    assert [(m.feature, m.score) for m in found] == [(0, 3.0), (1, pytest.approx(2 + 1 / 70_002))]
    assert [m.feature for m in catalog.search("ships filler")] == [1, 0]
    assert catalog.count("sae") == 4 and catalog.label("sae", 2) == ""


def test_plurals_find_singulars_and_back() -> None:
    catalog = Catalog({"sae": {0: "ocean waves", 1: "Oceans and seas", 2: "stories", 3: "box"}})
    assert {m.feature for m in catalog.search("oceans")} == {0, 1}
    assert {m.feature for m in catalog.search("ocean")} == {0, 1}
    assert [m.feature for m in catalog.search("wave")] == [0]
    assert [m.feature for m in catalog.search("story boxes")] == [2, 3]


def test_rare_words_weigh_more() -> None:
    labels = {i: f"the common thing {i}" for i in range(20)}
    labels[50] = "harbor"  # the only label with the rare word, at a higher index
    catalog = Catalog({"sae": labels})
    found = catalog.search("the harbor")
    assert found[0].feature == 50
    assert found[0].score > found[1].score
    assert [m.feature for m in found[1:]] == list(range(9))  # then ties, by index


def test_idf_counts_only_the_searched_saes() -> None:
    catalog = Catalog({
        "a": {0: "cat", 1: "dog", 2: "dog", 3: "dog"},
        "b": {0: "cat", 1: "cat", 2: "cat", 3: "cat", 4: "cat", 5: "dog"},
    })  # fmt: skip
    assert keys(catalog.search("cat dog", limit=1)) == [("a", 1)]  # dog: the rarer overall
    assert keys(catalog.search("cat dog", sae="a", limit=1)) == [("a", 0)]  # cat: rarer in a
    assert keys(catalog.search("cat dog", sae="b", limit=1)) == [("b", 5)]


def test_sae_filter_limit_and_no_match() -> None:
    catalog = Catalog({
        "res_12": {i: f"sea story {i}" for i in range(30)},
        "res_20": {i: f"sea {i}" for i in range(5)},
    })  # fmt: skip
    assert len(catalog.search("sea")) == 10  # limit 0 means 10
    assert len(catalog.search("sea", limit=3)) == 3
    assert len(catalog.search("sea", limit=100)) == 35
    only = catalog.search("sea", sae="res_20", limit=100)
    assert keys(only) == [("res_20", i) for i in range(5)]
    assert catalog.search("story", sae="res_20") == []
    assert catalog.search("whale") == []
    assert catalog.search("") == [] and catalog.search(" ?! ") == []
    with pytest.raises(KeyError):
        catalog.search("sea", sae="res_99")
    with pytest.raises(InvalidRequestError):
        catalog.search("sea", limit=-1)


def test_ties_go_to_the_lower_sae_name_then_feature() -> None:
    catalog = Catalog({"b": {9: "sea", 2: "sea"}, "a": {7: "sea", 1: "sea"}, "c": {}})
    assert catalog.saes == ("b", "a", "c")  # the order given
    assert keys(catalog.search("sea")) == [("a", 1), ("a", 7), ("b", 2), ("b", 9)]
    assert catalog.search("sea", sae="c") == []


def test_label_and_count() -> None:
    catalog = Catalog({"a": {5: "five", 2: "two"}, "b": {}, "c": {0: "..."}})
    assert catalog.label("a", 5) == "five" and catalog.label("a", 2) == "two"
    assert catalog.label("a", 3) == "" and catalog.label("a", 10**30) == ""
    assert catalog.label("zzz", 5) == "" and catalog.label("b", 0) == ""
    assert catalog.label("c", 0) == "..."  # labelled, though no word of it is searchable
    assert [catalog.count(s) for s in ("a", "b", "c", "zzz")] == [2, 0, 1, 0]
    assert catalog.search("five two") and Catalog({}).search("anything") == []


def test_a_phrase_scan_that_stops_early_still_ranks_right(monkeypatch: pytest.MonkeyPatch) -> None:
    # With one-posting blocks every block boundary of the phrase scan is exercised, and must
    # give what a scan of everything gives.
    kinds = ["the sea and ships", "ships and sea", "sea", "sea and ships, sea and ships"]
    catalog = Catalog({"sae": {i: kinds[i % 4] for i in range(40)} | {33: "Sea and ships"}})
    full = {q: catalog.search(q, limit=40) for q in ("sea and ships", "and sea", "sea")}
    # "sea and ships, sea and ships" is all query words; "the sea and ships" three quarters
    phrases = [i for i in range(40) if i % 4 == 3 and i != 33] + [
        i for i in range(40) if i % 4 == 0
    ]
    words_only = [i for i in range(40) if i % 4 == 1 and i != 33]
    sea_only = [i for i in range(40) if i % 4 == 2]
    expected = [33, *phrases, *words_only, *sea_only]
    assert [m.feature for m in full["sea and ships"]] == expected
    monkeypatch.setattr(catalog_module, "_FIRST_BLOCK", 1)
    for query, everything in full.items():
        for limit in (1, 2, 3, 5, 11, 40):
            assert catalog.search(query, limit=limit) == everything[:limit], (query, limit)


# ---------------------------------------------------------------------------- at scale


class Synthetic(NamedTuple):
    labels: dict[str, dict[int, str]]
    saes: npt.NDArray[np.str_]  # each row's SAE
    features: npt.NDArray[np.int64]  # each row's feature
    terms: npt.NDArray[np.int64]  # each row's term ids, from column 0 on, -1 after its end
    term_ids: dict[str, int]


def synthetic_labels(n: int, seed: int) -> Synthetic:
    """`n` labels over three SAEs (Zipf-like words, some inflected; planted phrases), and the
    terms of each label, from the stems of the words it was made of."""
    rng = np.random.default_rng(seed)
    vocab = ["the", "of", "and", "sea", "ships", "ship", "ocean", "waves", "sailing", "sails"]
    vocab += [f"w{i}" + ("s" if i % 7 == 0 else "") for i in range(3000)]
    term_ids: dict[str, int] = {}
    term_of = np.array([term_ids.setdefault(stem(w), len(term_ids)) for w in vocab])
    p = 1.0 / np.arange(2, len(vocab) + 2) ** 1.1
    lengths = rng.integers(1, 9, size=n)
    tokens = rng.choice(len(vocab), size=int(lengths.sum()), p=p / p.sum())
    starts = np.cumsum(lengths) - lengths
    matrix = np.full((n, 11), -1)
    matrix[
        np.repeat(np.arange(n), lengths), np.arange(len(tokens)) - np.repeat(starts, lengths)
    ] = term_of[tokens]
    saes, features = (
        np.array(["sae_b", "sae_a", "sae_c"])[np.arange(n) % 3],
        np.arange(n) * 7 % (3 * n),
    )
    labels: dict[str, dict[int, str]] = {"sae_b": {}, "sae_a": {}, "sae_c": {}}
    words_of = tokens.tolist()
    planted = [term_ids[t] for t in ("sea", "and", "ship")]
    for i, (start, length) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True)):
        text = " ".join(map(vocab.__getitem__, words_of[start : start + length]))
        if i % 97 == 0:  # planted; every other one is the phrase alone
            if i % 2 == 0:
                text, length = "", 0
                matrix[i] = -1
            text = f"{text} Sea and ships!"
            matrix[i, length : length + 3] = planted
        labels[str(saes[i])][int(features[i])] = text  # features: unique, not in order
    return Synthetic(labels, saes, features, matrix, term_ids)


def reference_search(
    data: Synthetic, query: str, sae: str, limit: int
) -> list[tuple[str, int, float]]:
    """The ranking, by brute force over every label (of the SAE, if one is named)."""
    q = [data.term_ids.get(t, -2) for t in terms(query)]  # -2: in no label
    m = data.terms
    searched = data.saes == sae if sae else np.ones(len(m), bool)
    holds = {t: (m == t).any(axis=1) & searched for t in dict.fromkeys(q)}
    idf = {t: math.log1p(searched.sum() / h.sum()) for t, h in holds.items() if h.any()}
    if not idf:
        return []
    share = sum(w * holds[t] for t, w in idf.items()) / sum(idf.values())
    phrase = np.zeros(len(m), bool)
    for start in range(m.shape[1] - len(q) + 1):
        phrase |= np.all(m[:, start : start + len(q)] == q, axis=1)
    exact = phrase & ((m >= 0).sum(axis=1) == len(q))  # the phrase, and nothing else
    in_query = np.isin(m, q)
    coverage = in_query.sum(axis=1) / np.maximum((m >= 0).sum(axis=1), 1)
    first = np.where(phrase & ~exact, np.argmax(in_query, axis=1), 0)  # ties of phrase labels
    score = np.where(exact, 3.0, np.where(phrase, 2.0 + 0.5 * coverage, np.minimum(share, 1.0)))
    found = np.flatnonzero(share > 0)
    order = (data.features[found], data.saes[found], first[found], -score[found].round(9))
    found = found[np.lexsort(order)]
    return [(str(data.saes[i]), int(data.features[i]), float(score[i])) for i in found[:limit]]


def test_large_catalog_matches_a_brute_force_ranking() -> None:
    data = synthetic_labels(200_000, seed=5)
    catalog = Catalog(data.labels)
    assert sum(catalog.count(s) for s in data.labels) == 200_000
    for i in range(0, 200_000, 97):  # the reference's rows are right
        row = [data.term_ids[t] for t in terms(data.labels[data.saes[i]][data.features[i]])]
        assert row == [t for t in data.terms[i] if t >= 0]
    cases = [
        ("the", "", 10),  # the commonest word
        ("w2500", "", 10),  # a rare one
        ("Sea and ships", "", 10),  # planted: exact labels, then phrases
        ("sea and ship", "sae_a", 25),  # a plural in the labels, one SAE
        ("the w1401 w1402", "", 20),  # rare words with a common one
        ("of the", "", 10),  # two common words
        ("sailed ocean w2999 unknownword", "sae_c", 10),  # a word in no label
        ("the unknownword", "sae_b", 10),  # one known word, no phrase possible
        ("sea sea", "", 10),  # one word, twice
        (" ".join(f"w{i}" for i in range(2000, 2018)), "", 15),  # 18 words
    ]
    for query, sae, limit in cases:
        expected = reference_search(data, query, sae, limit)
        got = catalog.search(query, sae=sae, limit=limit)
        assert keys(got) == [(s, f) for s, f, _ in expected], query
        assert [m.score for m in got] == pytest.approx([x[2] for x in expected]), query
        assert all(m.label == data.labels[m.sae][m.feature] for m in got)
