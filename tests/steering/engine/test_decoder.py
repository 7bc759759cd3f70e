"""The graphed decode path without capture (CPU): batch and key-length buckets over static
buffers, whole-width tables; it must give what `generate` gives, steering and rules included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from steering import EditMode, FeatureEdit, LoadedModel, load_model
from steering.engine import Engine
from steering.engine.decoder import GraphedDecoder
from steering.requests import FeatureRef, GenerationRequest, Rule, SamplingParams
from tests.steering.engine.test_engine import (
    EDITS,
    PROMPTS,
    _attachments,
    _collect,
    _greedy,
    _ids,
    _reference,
)
from tests.steering.engine.test_slot_cache import LONG


@pytest.fixture(params=["gemma2", "gemma3"])
def lm(request: pytest.FixtureRequest, model_folders: dict[str, Path]) -> LoadedModel:
    return load_model(model_folders[request.param], dtype=torch.float32)


def _graphed(lm: LoadedModel) -> Engine:
    engine = Engine.from_loaded(lm, _attachments(lm))
    engine._decoder = GraphedDecoder(lm.model, engine._steering, engine._cache, capture=False)
    return engine


def test_bucketed_static_decode_equals_generate(lm: LoadedModel) -> None:
    engine = _graphed(lm)
    decoder = engine._decoder
    assert isinstance(decoder, GraphedDecoder) and engine._slots.fixed
    prompts = [_ids(lm, p) for p in PROMPTS] + [_ids(lm, LONG)]
    edits = [*EDITS, (FeatureEdit("late", 2, EditMode.ADD, 3.0),)]
    lengths = [7, 12, 5, 9, 11, 8]
    handles = {}
    schedule = {0: [0, 1, 2], 2: [3], 4: [4, 5]}  # step -> requests added before it
    for step in range(5):
        for i in schedule.get(step, []):
            handles[i] = engine.add(_greedy(prompts[i], edits[i], lengths[i]))
        engine.step()
    while not engine.idle:
        engine.step()
    # Several buckets were used, one of them with padding rows beyond the held slots.
    assert len(decoder._graphs) >= 2 and any(rows == 8 for rows, _ in decoder._graphs)
    for i, handle in handles.items():
        assert _collect(handle.channel)[0] == _reference(
            lm, engine.hooks, prompts[i], edits[i], lengths[i]
        )


def test_rules_and_watch_read_back_through_the_static_buffers(lm: LoadedModel) -> None:
    """A rule that fires in the prompt (its latch written with the slot) and a watched feature:
    the same on both paths."""
    prompt = tuple(_ids(lm, PROMPTS[0]))
    rule = Rule(FeatureRef("late", 3), -1e9, apply=(FeatureEdit("early", 5, EditMode.SET, 30.0),))
    request = GenerationRequest(
        prompt,
        SamplingParams(max_new_tokens=8, ignore_eos=True),
        watch=(FeatureRef("early", 9),),
        rules=(rule,),
    )
    results = []
    for engine in (Engine.from_loaded(lm, _attachments(lm)), _graphed(lm)):
        other = engine.add(_greedy(list(prompt[:3]), (), 10))  # company in a higher slot
        handle = engine.add(request)
        while not engine.idle:
            engine.step()
        tokens, watched, receipts = [], [], ()
        while (chunk := handle.channel.take(0)) is not None:
            tokens += chunk.token_ids
            watched += chunk.watched
            receipts = chunk.receipts or receipts
        results.append((tokens, watched, receipts, _collect(other.channel)[0]))
    (eager_tokens, eager_watch, eager_receipts, eager_other), graphed = results[0], results[1]
    assert graphed[0] == eager_tokens and graphed[2] == eager_receipts and graphed[3] == eager_other
    assert eager_receipts and eager_receipts[0].applied > 0  # the rule fired and steered
    torch.testing.assert_close(torch.tensor(graphed[1]), torch.tensor(eager_watch))
