"""Feature cards in the core: top contexts from label files, the tokens a decoder direction
promotes and suppresses (against a direct computation), and model work on the engine thread."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

import steering.discovery.cards as cards
from steering.discovery.cards import token_effects
from steering.discovery.catalog import Catalog
from steering.discovery.labels import MAX_CONTEXT_CHARS, MAX_CONTEXTS, load_label_file
from steering.errors import EngineClosedError
from tests.frontends import running_frontend


def test_label_files_keep_top_contexts(tmp_path: Path) -> None:
    many = [f"context {i}" for i in range(MAX_CONTEXTS + 5)]
    entries = [
        {"index": "1", "description": "one", "topContexts": ["a [[b]] c", " d [[e]] \n"]},
        {"index": "2", "description": "two", "topContexts": [{"text": "x"}, 4, None, "", "ok"]},
        {"index": "3", "description": "three", "topContexts": "not a list"},
        {"index": "4", "description": "four", "topContexts": many},
        {"index": "5", "description": None, "topContexts": ["x" * (MAX_CONTEXT_CHARS + 9)]},
        {"index": "1", "description": "later", "topContexts": ["later"]},
        {"index": "6", "description": "six", "topContexts": ["bad \ud800 text", "good"]},
    ]  # fmt: skip
    file = tmp_path / "explanations.json"
    file.write_text(json.dumps(entries))
    read = load_label_file(file, 10)
    assert read.top_contexts[1] == ("a [[b]] c", "d [[e]]")  # the first entry's, trimmed
    assert read.top_contexts[2] == ("ok",)  # what is not a non-empty string is skipped
    assert 3 not in read.top_contexts
    assert read.top_contexts[4] == tuple(many[:MAX_CONTEXTS])
    (long,) = read.top_contexts[5]
    assert len(long) == MAX_CONTEXT_CHARS and long.endswith("…")
    assert read.top_contexts[6] == ("good",)
    assert read.labels[1] == "one"


def test_catalog_gives_top_contexts() -> None:
    catalog = Catalog({"a": {1: "sea"}}, top_contexts={"a": {1: ("the [[sea]]",), 4: ("x",)}})
    assert catalog.top_contexts("a", 1) == ("the [[sea]]",)
    assert catalog.top_contexts("a", 4) == ("x",)  # features without a label keep theirs
    assert catalog.top_contexts("a", 2) == catalog.top_contexts("b", 1) == ()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_effects_are_the_top_and_bottom_of_the_direction_through_the_unembedding(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cards, "CHUNK_ROWS", 7)  # several chunks, one of them short
    gen = torch.Generator().manual_seed(0)
    unembedding = torch.randn(50, 16, generator=gen).to(dtype)
    direction = torch.randn(16, generator=gen)
    logits = unembedding.float() @ direction  # the reference, in float32
    effects = token_effects(direction, unembedding, 5)
    top = torch.topk(logits, 5)
    bottom = torch.topk(-logits, 5)
    assert [i for i, _ in effects.promoted] == top.indices.tolist()
    assert [i for i, _ in effects.suppressed] == bottom.indices.tolist()
    assert [w for _, w in effects.promoted] == pytest.approx(top.values.tolist(), rel=1e-6)
    assert [w for _, w in effects.suppressed] == pytest.approx((-bottom.values).tolist(), rel=1e-6)
    only = token_effects(direction, unembedding, 100, vocab_size=20)
    assert len(only.promoted) == 20 and max(i for i, _ in only.promoted) < 20


def test_ties_go_to_the_lower_token_id() -> None:
    unembedding = torch.tensor([[1.0], [2.0], [2.0], [0.0], [0.0]])
    effects = token_effects(torch.tensor([1.0]), unembedding, 2)
    assert effects.promoted == [(1, 2.0), (2, 2.0)]
    assert effects.suppressed == [(3, 0.0), (4, 0.0)]


def test_engine_calls_run_on_the_engine_thread(model_folders: dict[str, Path]) -> None:
    with running_frontend(model_folders["gemma2"], [("s", 1, 8, 0)]) as front:
        engine = front.engine
        assert engine.call(lambda: threading.current_thread().name).result(30) == "engine"

        def fails() -> None:
            raise ValueError("inside")

        with pytest.raises(ValueError, match="inside"):
            engine.call(fails).result(30)
    with pytest.raises(EngineClosedError):
        engine.call(lambda: 1)
