"""The graphed decode path without capture (CPU): batch and key-length buckets over static
buffers, whole-width tables; it must give what `generate` gives, steering and rules included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from steering import EditMode, FeatureEdit, LoadedModel, load_model
from steering.engine import Engine, EngineConfig
from steering.engine.decoder import (
    ContextDecoder,
    Decoder,
    FixedDecoder,
    GraphedDecoder,
    replay_mismatch,
)
from steering.engine.engine import DecodeShapes
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


def _mix(lm: LoadedModel) -> tuple[list[list[int]], list[tuple[FeatureEdit, ...]], list[int]]:
    """Six requests (one prompt longer than the window), steered differently, of six lengths."""
    prompts = [_ids(lm, p) for p in PROMPTS] + [_ids(lm, LONG)]
    edits = [*EDITS, (FeatureEdit("late", 2, EditMode.ADD, 3.0),)]
    return prompts, edits, [7, 12, 5, 9, 11, 8]


def _joining_and_leaving(
    engine: Engine,
    prompts: list[list[int]],
    edits: list[tuple[FeatureEdit, ...]],
    lengths: list[int],
) -> dict[int, Any]:
    """Run the mix with requests joining at steps 0, 2 and 4 and leaving as they finish."""
    handles = {}
    schedule = {0: [0, 1, 2], 2: [3], 4: [4, 5]}  # step -> requests added before it
    for step in range(5):
        for i in schedule.get(step, []):
            handles[i] = engine.add(_greedy(prompts[i], edits[i], lengths[i]))
        engine.step()
    while not engine.idle:
        engine.step()
    return handles


def test_bucketed_static_decode_equals_generate(lm: LoadedModel) -> None:
    engine = _graphed(lm)
    decoder = engine._decoder
    assert isinstance(decoder, GraphedDecoder) and engine._slots.fixed
    prompts, edits, lengths = _mix(lm)
    handles = _joining_and_leaving(engine, prompts, edits, lengths)
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


def _run_against_reference(lm: LoadedModel, engine: Engine) -> None:
    """Two requests, one steered, through `engine`: each gives what `generate` gives."""
    prompts = [_ids(lm, p) for p in PROMPTS[:2]]
    handles = [engine.add(_greedy(p, e, 6)) for p, e in zip(prompts, EDITS, strict=False)]
    while not engine.idle:
        engine.step()
    for handle, prompt, edits in zip(handles, prompts, EDITS, strict=False):
        assert _collect(handle.channel)[0] == _reference(lm, engine.hooks, prompt, edits, 6)


def test_a_replay_that_disagrees_with_the_eager_step_falls_back_to_eager(
    lm: LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    engine = _graphed(lm)
    decoder = engine._decoder
    assert isinstance(decoder, GraphedDecoder) and engine.cuda_graphs == "on"
    new = decoder._new

    def wrong(rows: int, keys: int) -> Any:  # a graph whose replay corrupts its logits
        graph = new(rows, keys)
        replay = graph.replay

        def corrupted() -> None:
            replay()
            assert graph.logits is not None
            graph.logits = graph.logits.flip(-1)

        graph.replay = corrupted
        return graph

    decoder._new = wrong  # type: ignore[method-assign]
    _run_against_reference(lm, engine)  # eager decoding served every step
    assert decoder.fallback is not None and "greedy tokens" in decoder.fallback
    assert engine.cuda_graphs.startswith("fallback: ") and not engine.snapshot().cuda_graphs
    assert not decoder._graphs
    assert sum("CUDA graphs off" in r.message for r in caplog.records) == 1


def test_a_capture_error_falls_back_to_eager(lm: LoadedModel) -> None:
    engine = _graphed(lm)
    decoder = engine._decoder
    assert isinstance(decoder, GraphedDecoder)
    decoder.capture = True  # capturing needs CUDA: on this CPU it raises
    _run_against_reference(lm, engine)
    assert engine.cuda_graphs.startswith("fallback: capture of bucket")


def test_an_agreeing_replay_keeps_the_graphs(lm: LoadedModel) -> None:
    engine = _graphed(lm)
    _run_against_reference(lm, engine)
    assert engine.cuda_graphs == "on" and engine.snapshot().cuda_graphs


def test_replay_mismatch_names_what_differs() -> None:
    eager = torch.tensor([[1.0, 5.0, 2.0], [0.5, 0.1, 0.2]])
    assert replay_mismatch(eager, eager + 1e-4) is None
    assert "greedy tokens" in str(replay_mismatch(eager, eager.flip(-1)))
    assert "differ" in str(
        replay_mismatch(eager, eager + torch.tensor([[0.0, 0.5, 0.0], [0, 0, 0]]))
    )
    assert replay_mismatch(eager, torch.full_like(eager, float("nan"))) is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shapes_kind", ["context", "fixed"])
def test_invariant_decode_shapes_read_the_whole_context_and_equal_the_request_alone(
    model_folders: dict[str, Path],
    dtype: torch.dtype,
    shapes_kind: DecodeShapes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """EngineConfig.decode_shapes "context": every decode forward reads the whole slot context
    (rows by batch); "fixed": also at max_active_rows rows, whatever runs. A mix of requests
    joining and leaving gives each one the tokens it gets alone, steered or not."""
    lm = load_model(model_folders["gemma2"], dtype=dtype)
    engine = Engine.from_loaded(lm, _attachments(lm), EngineConfig(decode_shapes=shapes_kind))
    kind = FixedDecoder if shapes_kind == "fixed" else ContextDecoder
    assert type(engine._decoder) is kind and engine._slots.fixed
    shapes: set[tuple[int, int]] = set()
    eager = Decoder.__call__

    def spied(self: Decoder, ids: torch.Tensor, positions: torch.Tensor, length: int) -> Any:
        shapes.add((ids.shape[0], length))
        return eager(self, ids, positions, length)

    monkeypatch.setattr(Decoder, "__call__", spied)
    prompts, edits, lengths = _mix(lm)
    alone = []
    for i, prompt in enumerate(prompts):
        handle = engine.add(_greedy(prompt, edits[i], lengths[i]))
        while not engine.idle:
            engine.step()
        alone.append(_collect(handle.channel)[0])
    handles = _joining_and_leaving(engine, prompts, edits, lengths)
    shape = engine._cache.shape
    assert {length for _, length in shapes} == {shape.context}
    rows = {n for n, _ in shapes}
    assert rows == {shape.slots} if shapes_kind == "fixed" else len(rows) > 1
    assert {i: _collect(h.channel)[0] for i, h in handles.items()} == dict(enumerate(alone))
    if dtype == torch.float32:
        assert alone[4] == _reference(lm, engine.hooks, prompts[4], edits[4], lengths[4])
