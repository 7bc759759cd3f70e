"""The static slot KV cache: where prompt chunks and decode steps write, the masks, the engine
on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from steering import LoadedModel, load_model
from steering.engine import Engine, EngineConfig
from steering.engine.slot_cache import FULL, SLIDING, CacheShape, SlotCache
from steering.errors import InvalidRequestError
from steering.requests import FinishReason, Limits
from tests.mock_model import MockModel, mock_reference
from tests.steering.engine.test_engine import (
    EDITS,
    PROMPTS,
    _attachments,
    _collect,
    _greedy,
    _ids,
    _reference,
)

LONG = " ".join(PROMPTS) + " and the sea was wide and the ship sailed on"


def _cache(slots: int = 3, context: int = 8, window: int | None = 3) -> SlotCache:
    types = (FULL, SLIDING) if window is not None else (FULL,)
    shape = CacheShape(slots, context, types, window, 1, 1, torch.float32, torch.device("cpu"))
    return SlotCache(shape)


def _keys(rows: list[list[float]]) -> torch.Tensor:
    """(B, 1, T, 1): each token's key is the value given."""
    return torch.tensor(rows, dtype=torch.float32)[:, None, :, None]


def test_chunks_write_a_prompt_into_its_slot_and_the_ring_keeps_the_window() -> None:
    cache = _cache()
    cache.chunk(2, 0, 5)  # the first chunk of slot 2's prompt: positions 0..4
    keys = _keys([[10, 11, 12, 13, 14]])
    for layer in (0, 1):
        seen, _ = cache.update(keys, keys, layer)
        assert seen is keys  # a first chunk attends over its own keys only
    full, ring = cache.keys[0][:, 0, :, 0], cache.keys[1][:, 0, :, 0]
    assert full[2, :5].tolist() == [10, 11, 12, 13, 14]
    assert full[:2].eq(0).all() and full[2, 5:].eq(0).all()  # nothing else written
    assert ring[2].tolist() == [13, 14, 12]  # positions 2, 3, 4 at p % 3
    cache.chunk(2, 5, 2)  # the next chunk, positions 5 and 6, reads what the slot holds
    more = _keys([[15, 16]])
    seen_full, _ = cache.update(more, more, 0)
    seen_ring, _ = cache.update(more, more, 1)
    assert seen_full[0, 0, :, 0].tolist() == [10, 11, 12, 13, 14, 15, 16]
    assert seen_ring[0, 0, :, 0].tolist() == [
        13,
        14,
        12,
        15,
        16,
    ]  # the ring as it was, then its own
    assert full[2, :7].tolist() == list(range(10, 17)) and ring[2].tolist() == [16, 14, 15]


def test_decode_writes_one_position_per_slot_and_reads_the_slots_in_place() -> None:
    cache = _cache()
    for slot, prompt in enumerate(([1.0, 2.0], [5.0, 6.0, 7.0, 8.0])):
        cache.chunk(slot, 0, len(prompt))
        for layer in (0, 1):
            cache.update(_keys([prompt]), _keys([prompt]), layer)
    positions = torch.tensor([2, 4])
    cache.decode(positions, 5)
    token = _keys([[3], [9]])
    full, _ = cache.update(token, token, 0)
    ring, _ = cache.update(token, token, 1)
    assert full.data_ptr() == cache.keys[0].data_ptr()  # a view of the buffer, not a copy
    assert full[:, 0, :, 0].tolist() == [[1, 2, 3, 0, 0], [5, 6, 7, 8, 9]]
    assert ring[:, 0, :, 0].tolist() == [[1, 2, 3], [8, 9, 7]]  # position 4 overwrote 1 (6)
    masks = cache.decode_masks(positions, 5, additive=False)
    assert masks[FULL][:, 0, 0].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert masks[SLIDING][:, 0, 0].tolist() == [[True] * 3, [True] * 3]


def test_chunk_masks_are_causal_within_the_window_over_what_the_slot_holds() -> None:
    cache = _cache(window=2)
    first = cache.chunk_masks(0, 3, additive=False)
    assert first[FULL][0, 0].tolist() == [
        [True, False, False],
        [True, True, False],
        [True, True, True],
    ]
    eager = cache.chunk_masks(0, 3, additive=True)[SLIDING][0, 0]
    low = torch.finfo(torch.float32).min
    assert eager.tolist() == [[0, low, low], [0, 0, low], [low, 0, 0]]
    # Positions 3 and 4 after 0..2: the full layer holds 0, 1, 2; the ring of 2 holds 2 at
    # entry 0 and 1 at entry 1 (keys [2, 1] then the chunk's own [3, 4]).
    later = cache.chunk_masks(3, 2, additive=False)
    assert later[FULL][0, 0].tolist() == [[True] * 4 + [False], [True] * 5]
    assert later[SLIDING][0, 0].tolist() == [[True, False, True, False], [False, False, True, True]]


def test_the_cache_size_is_known_before_any_request() -> None:
    cache = _cache(slots=4, context=100, window=10)
    # Per slot and position: keys and values of one head of width 1, float32.
    assert cache.shape.nbytes == 4 * (100 + 10) * 2 * 4
    assert sum(
        k.numel() * 4 + v.numel() * 4 for k, v in zip(cache.keys, cache.values, strict=True)
    ) == (cache.shape.nbytes)
    assert _cache(slots=1, context=8, window=16).shape.length(SLIDING) == 8  # no ring needed


@pytest.fixture(params=["gemma2", "gemma3"])
def lm(request: pytest.FixtureRequest, model_folders: dict[str, Path]) -> LoadedModel:
    return load_model(model_folders[request.param], dtype=torch.float32)


def _buffers(engine: Engine) -> list[int]:
    return [t.data_ptr() for t in engine._cache.keys + engine._cache.values]


def test_prompts_longer_than_the_window_join_a_running_batch_exactly(lm: LoadedModel) -> None:
    engine = Engine.from_loaded(lm, _attachments(lm))
    window = int(lm.model.config.get_text_config().sliding_window)
    long = _ids(lm, LONG)
    assert len(long) > 2 * window
    assert engine._cache.shape.length(SLIDING) == window  # the sliding layers are rings
    asks = [(long, EDITS[0], 10), (_ids(lm, PROMPTS[1]), (), 30), (long[:-5], EDITS[2], 12)]
    handles = [engine.add(_greedy(*asks[0]))]
    engine.step()
    handles.append(engine.add(_greedy(*asks[1])))
    for _ in range(4):
        engine.step()
    handles.append(engine.add(_greedy(*asks[2])))
    while not engine.idle:
        engine.step()
    for (prompt, edits, n), handle in zip(asks, handles, strict=True):
        assert _collect(handle.channel) == (
            _reference(lm, engine.hooks, prompt, edits, n),
            FinishReason.LENGTH,
        )


def test_joining_moves_no_other_row_and_a_full_engine_admits_as_slots_free(
    lm: LoadedModel,
) -> None:
    config = EngineConfig(limits=Limits(max_active_rows=2))
    engine = Engine.from_loaded(lm, _attachments(lm), config)
    buffers = _buffers(engine)
    full = engine._cache.keys[engine._cache.shape.layer_types.index(FULL)]
    prompts = [_ids(lm, p) for p in PROMPTS]
    lengths = [6, 14, 5, 9, 4]
    handles = [engine.add(_greedy(p, EDITS[i], lengths[i])) for i, p in enumerate(prompts)]
    engine.step()  # the first two are admitted; three wait
    assert engine.snapshot().running == 2 and engine.snapshot().waiting == 3
    held: list[list[int]] = []
    while not engine.idle:
        batch = engine._batch
        assert batch is not None
        before = {
            key: full[slot, :, :at].clone()
            for key, slot, at in zip(batch.keys, batch.slots, batch.positions, strict=True)
        }
        engine.step()
        assert _buffers(engine) == buffers  # never reallocated, never grown
        if engine._batch is not None:
            held.append(sorted(engine._batch.slots))
            assert len(engine._batch) <= 2 and set(engine._batch.slots) <= {0, 1}
            for key, slot in zip(engine._batch.keys, engine._batch.slots, strict=True):
                if key in before:  # what a row held before the step is where it was
                    old = before[key]
                    assert torch.equal(full[slot, :, : old.shape[1]], old)
    assert [0, 1] in held
    assert engine._batch is None and engine.snapshot().running == 0
    for i, handle in enumerate(handles):
        assert _collect(handle.channel) == (
            _reference(lm, engine.hooks, prompts[i], EDITS[i], lengths[i]),
            FinishReason.LENGTH,
        )


def test_an_aborted_row_frees_its_slot_for_the_next_request(lm: LoadedModel) -> None:
    config = EngineConfig(limits=Limits(max_active_rows=2))
    engine = Engine.from_loaded(lm, (), config)
    prompts = [_ids(lm, p) for p in PROMPTS[:3]]
    first, second, third = (engine.add(_greedy(p, (), 20)) for p in prompts)
    for _ in range(3):
        engine.step()
    assert engine._batch is not None and engine._batch.keys == [first.key, second.key]
    slot = engine._batch.slots[0]
    engine.abort(first.key)
    engine.step()
    assert engine._batch is not None and engine._batch.keys == [second.key, third.key]
    assert engine._batch.slots[1] == slot  # the freed slot, taken in the same step
    while not engine.idle:
        engine.step()
    assert _collect(first.channel)[1] is FinishReason.ABORTED
    for prompt, handle in ((prompts[1], second), (prompts[2], third)):
        assert _collect(handle.channel)[0] == _reference(lm, engine.hooks, prompt, (), 20)
    assert engine._batch is None


def test_a_row_in_a_high_slot_equals_the_row_alone(lm: LoadedModel) -> None:
    """Batch invariance: free slots below a row and rows beside it change none of its tokens."""
    engine = Engine.from_loaded(lm, _attachments(lm))
    prompts = [_ids(lm, p) for p in PROMPTS]
    handles = [engine.add(_greedy(p, EDITS[i], 3 if i < 3 else 16)) for i, p in enumerate(prompts)]
    for _ in range(4):
        engine.step()  # the first three finish: the last two run in slots 3 and 4 alone
    assert engine._batch is not None and sorted(engine._batch.slots) == [3, 4]
    while not engine.idle:
        engine.step()
    for i in (3, 4):
        assert _collect(handles[i].channel)[0] == _reference(
            lm, engine.hooks, prompts[i], EDITS[i], 16
        )


def test_the_longest_request_the_limits_admit_fits_its_slot_exactly() -> None:
    limits = Limits(max_prompt_tokens=8, max_new_tokens=5, default_max_new_tokens=2)
    engine = Engine(MockModel(), special_ids=[0], eos_ids=[], config=EngineConfig(limits))
    assert engine._cache.shape.context == 8 + 5  # the slot holds the prompt and all it may add
    assert engine.kv_cache_bytes == 2 * 16 * 13 * 4  # 16 slots, one layer of one value wide
    prompt = [3, 4, 5, 6, 7, 8, 9, 10]
    handles = [engine.add(_greedy(prompt, (), 5)) for _ in range(16)]  # every slot, in full
    with pytest.raises(InvalidRequestError, match="max_new_tokens"):
        engine.add(_greedy(prompt, (), 6))
    while not engine.idle:
        engine.step()
    for handle in handles:
        assert _collect(handle.channel) == (mock_reference(prompt, 5), FinishReason.LENGTH)


def test_a_bfloat16_model_decodes_from_a_bfloat16_cache(model_folders: dict[str, Path]) -> None:
    """What `--dtype auto` picks on a CPU with native bf16: the cache and masks follow the model."""
    lm = load_model(model_folders["gemma3"], dtype=torch.bfloat16)
    engine = Engine.from_loaded(lm, _attachments(lm))
    assert all(k.dtype == torch.bfloat16 for k in engine._cache.keys)
    handles = [engine.add(_greedy(_ids(lm, p), EDITS[i], 6)) for i, p in enumerate(PROMPTS[:3])]
    while not engine.idle:
        engine.step()
    for handle in handles:
        tokens, reason = _collect(handle.channel)
        assert reason is FinishReason.LENGTH and len(tokens) == 6


@pytest.mark.parametrize("budget", [5, 13])
def test_prompts_in_chunks_across_the_window_equal_generate_alone(
    lm: LoadedModel, budget: int
) -> None:
    config = EngineConfig(prefill_tokens_per_step=budget)
    engine = Engine.from_loaded(lm, _attachments(lm), config)
    window = int(lm.model.config.get_text_config().sliding_window)
    long = _ids(lm, LONG)
    assert len(long) > 2 * window > 2 * budget - 2  # chunks that end inside and past the ring
    asks = [(long, EDITS[0], 10), (_ids(lm, PROMPTS[1]), (), 30), (long[:-5], EDITS[2], 12)]
    handles = [engine.add(_greedy(*asks[0]))]
    engine.step()
    handles.append(engine.add(_greedy(*asks[1])))  # joins while the long prompt is in chunks
    aborted = engine.add(_greedy(long[3:], EDITS[3], 8))
    for _ in range(3):
        engine.step()
    engine.abort(aborted.key)  # mid-chunk, or still waiting its turn
    handles.append(engine.add(_greedy(*asks[2])))
    steps = []
    while not engine.idle:
        steps.append(engine.step().prefill_tokens)
    assert max(steps) <= budget
    for (prompt, edits, n), handle in zip(asks, handles, strict=True):
        assert _collect(handle.channel) == (
            _reference(lm, engine.hooks, prompt, edits, n),
            FinishReason.LENGTH,
        )
    assert _collect(aborted.channel) == ([], FinishReason.ABORTED)
