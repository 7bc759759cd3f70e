"""Per-slot steering tables: the gathered math against the per-batch tables and the full
reference; writing, clearing and refusing; the engine's tables after it goes idle."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from steering import EditMode, FeatureEdit, load_model
from steering.demo.toy import random_sae
from steering.engine import Engine, EngineConfig
from steering.errors import InvalidRequestError
from steering.requests import FeatureRef, GenerationRequest, Limits, Rule, SamplingParams
from steering.steer.plan import Readback, RowAsk
from steering.steer.readings import read, read_table
from steering.steer.slot_tables import SlotStep, SlotTables, read_slots, steer_slots
from steering.steer.tables import build_tables, steer_rows
from tests.reference import reference_row, rel_error
from tests.steering.engine.test_engine import EDITS, PROMPTS, _attachments, _collect, _greedy

D_MODEL, D_SAE, T = 32, 96, 5


@pytest.fixture
def sae():
    return random_sae(D_MODEL, D_SAE, seed=5, threshold=0.2)


def _random_rows(gen: torch.Generator, n: int, trial: int) -> list[list[FeatureEdit]]:
    rows = []
    for _ in range(n):
        k = int(torch.randint(0, 5, (1,), generator=gen))
        features = torch.randperm(D_SAE, generator=gen)[:k].tolist()
        modes = itertools.cycle(list(EditMode)[trial % 4 :] + list(EditMode)[: trial % 4])
        rows.append(
            [
                FeatureEdit("s", f, next(modes), float(torch.randn(1, generator=gen)), bool(f % 2))
                for f in features
            ]
        )
    return rows


def _step(tables: SlotTables, n: int) -> SlotStep:
    return SlotStep(tables, n, tables.widths(n), tables.latch[:n])


def test_gathered_rows_equal_the_batch_tables_and_the_reference(sae) -> None:
    gen = torch.Generator().manual_seed(0)
    for trial in range(12):
        n = int(torch.randint(1, 6, (1,), generator=gen))
        x = torch.randn(n, T, D_MODEL, generator=gen)
        steerable = torch.rand(n, T, generator=gen) > 0.2
        rows = _random_rows(gen, n, trial)
        slots = SlotTables({"s": sae}, 8, features=4, reads=2, rules=1)
        for b, edits in enumerate(rows):
            slots.write(b, RowAsk(tuple(edits)))
        step = _step(slots, n)
        if "s" not in step.widths:
            continue  # no row edits: the hooks leave the residual alone
        got = steer_slots(x, sae, slots.tables["s"], step, step.widths["s"][0], steerable)
        batch = build_tables(rows, {"s": sae})["s"]
        want, counts = steer_rows(x, batch, steerable)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        for b, edits in enumerate(rows):
            assert rel_error(got[b][steerable[b]], want[b][steerable[b]]) <= 1e-5
            full = reference_row(x[b], sae, edits)
            assert rel_error(got[b][steerable[b]], full[steerable[b]]) <= 1e-5
            # Each edit's counts land at its own column of its row's slot.
            r = int((batch.rows == b).nonzero()) if edits else None
            for k, edit in enumerate(edits):
                c = int((batch.features == edit.feature).nonzero())
                assert slots.tables["s"].totals[b, k].tolist() == counts[r, c].tolist()


def test_rule_edits_wait_for_their_latch_and_reads_equal_the_batch_reads(sae) -> None:
    x = torch.randn(2, T, D_MODEL, generator=torch.Generator().manual_seed(3))
    rule = Rule(FeatureRef("s", 7), 0.0, apply=(FeatureEdit("s", 3, EditMode.SET, 9.0),))
    ask = RowAsk((FeatureEdit("s", 1, EditMode.ADD, 2.0),), (FeatureRef("s", 11),), rules=(rule,))
    slots = SlotTables({"s": sae}, 4, features=4, reads=4, rules=2)
    slots.write(1, ask)
    step = _step(slots, 2)
    off = steer_slots(x, sae, slots.tables["s"], step, 2, None)
    only_request = steer_rows(x, build_tables([[], ask.edits], {"s": sae})["s"])[0]
    torch.testing.assert_close(off, only_request)
    slots.latch[1, 0] = True
    on = steer_slots(x, sae, slots.tables["s"], _step(slots, 2), 2, None)
    both = steer_rows(x, build_tables([[], ask.all_edits], {"s": sae})["s"])[0]
    torch.testing.assert_close(on, both)
    named = read_slots(x, sae, slots.tables["s"], 2, 2, None)
    want = read(x, sae, read_table(sae, [1], [7, 11], [], 0), None).named
    assert want is not None
    torch.testing.assert_close(named[1], want[0][:, [1, 0]])  # watch first, then the condition


def test_writing_over_a_slot_forgets_its_last_row_and_clearing_empties_it(sae) -> None:
    slots = SlotTables({"s": sae}, 2, features=3, reads=2, rules=2)
    rule = Rule(FeatureRef("s", 2), 1.0, stop=True)
    slots.write(0, RowAsk(tuple(FeatureEdit("s", f, EditMode.SET, 1.0) for f in (4, 5, 6))))
    slots.write(0, RowAsk((FeatureEdit("s", 9, EditMode.ABLATE),), rules=(rule,), fired={0}))
    t = slots.tables["s"]
    assert t.used[0].tolist() == [True, False, False] and t.features[0, 0] == 9
    assert slots.latch[0, 0] and slots.widths(2) == {"s": (1, 1, 1)}
    slots.clear(0)
    assert slots.empty and not t.used.any() and not slots.latch.any() and not t.rule_used.any()
    assert slots.widths(2) == {}


def test_receipts_of_a_slot_read_back_in_one_copy(sae) -> None:
    slots = SlotTables({"s": sae}, 3, features=2, reads=1, rules=1)
    edits = (FeatureEdit("s", 1, EditMode.SET, 2.0), FeatureEdit("s", 2, EditMode.SET, 2.0))
    slots.write(2, RowAsk(edits))
    slots.tables["s"].totals[2] = torch.tensor([[3, 1], [4, 0]])
    readback = Readback()
    slots.queue(3, {}, readback)
    readback.fetch()
    assert slots.counts(readback, 2) == [(3, 1), (4, 0)]


@pytest.fixture(params=["gemma2", "gemma3"])
def engine(request: pytest.FixtureRequest, model_folders: dict[str, Path]) -> Engine:
    lm = load_model(model_folders[request.param], dtype=torch.float32)
    engine = Engine.from_loaded(lm, _attachments(lm), EngineConfig(Limits(max_edits_per_sae=2)))
    engine.tokenizer = lm.tokenizer  # type: ignore[attr-defined]
    return engine


def _run_all(engine: Engine, fixed: bool) -> list[tuple[list[int], object]]:
    engine._slots.fixed = fixed
    watch = (FeatureRef("late", 3), FeatureRef("early", 9))
    handles = []
    for i, p in enumerate(PROMPTS[:4]):
        ids = tuple(engine.tokenizer(p).input_ids)  # type: ignore[attr-defined]
        sampling = SamplingParams(max_new_tokens=6 + i, ignore_eos=True)
        handles.append(engine.add(GenerationRequest(ids, sampling, EDITS[i], watch=watch)))
        engine.step()
    while not engine.idle:
        engine.step()
    out = []
    for handle in handles:
        tokens, watched, receipts = [], [], ()
        while (chunk := handle.channel.take(0)) is not None:
            tokens += chunk.token_ids
            watched += chunk.watched
            receipts = chunk.receipts or receipts
        out.append((tokens, (watched, receipts)))
    return out


def test_whole_tables_give_what_trimmed_ones_give_and_idle_leaves_them_clear(
    engine: Engine,
) -> None:
    trimmed = _run_all(engine, fixed=False)
    whole = _run_all(engine, fixed=True)  # every step at full width: the CUDA-graph shapes
    assert [t for t, _ in whole] == [t for t, _ in trimmed]
    for (_, (w_watch, w_receipts)), (_, (t_watch, t_receipts)) in zip(whole, trimmed, strict=True):
        assert w_receipts == t_receipts
        torch.testing.assert_close(torch.tensor(w_watch), torch.tensor(t_watch))
    assert any(r for _, (_, r) in trimmed)  # receipts were there to compare
    slots = engine._slots
    assert engine.idle and slots.empty and not slots.latch.any()
    for table in slots.tables.values():
        assert not table.used.any() and not table.totals.any() and not table.rule_used.any()


def test_a_request_with_more_edits_than_a_slot_holds_is_refused(engine: Engine) -> None:
    three = tuple(FeatureEdit("early", f, EditMode.SET, 1.0) for f in (1, 2, 3))
    with pytest.raises(InvalidRequestError, match=r"3 edits of SAE 'early'.*limit of 2"):
        engine.add(GenerationRequest((2, 5, 6), SamplingParams(max_new_tokens=2), three))
    rule = Rule(FeatureRef("late", 1), 0.5, apply=three[1:])  # the rules' edits count too
    with pytest.raises(InvalidRequestError, match="the rules' included"):
        engine.add(
            GenerationRequest((2, 5), SamplingParams(max_new_tokens=2), three[:1], rules=(rule,))
        )
    engine.add(GenerationRequest((2, 5), SamplingParams(max_new_tokens=2), three[:2]))
    while not engine.idle:
        engine.step()


def test_a_slot_reused_by_another_request_carries_nothing_over(engine: Engine) -> None:
    prompt = list(engine.tokenizer(PROMPTS[0]).input_ids)  # type: ignore[attr-defined]
    steered = engine.add(_greedy(prompt, (FeatureEdit("early", 5, EditMode.SET, 40.0),), 4))
    while not engine.idle:
        engine.step()
    plain = engine.add(_greedy(prompt, (), 8))
    alone = engine.add(_greedy(prompt, (), 8))
    while not engine.idle:
        engine.step()
    first, second = _collect(plain.channel)[0], _collect(alone.channel)[0]
    assert first == second and _collect(steered.channel)[0] != first[:4]
