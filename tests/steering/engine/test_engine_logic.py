"""Engine scheduling, limits, aborts, faults and output channels, on a mock model (fast)."""

from __future__ import annotations

import threading

import pytest

from steering.engine import Engine, EngineConfig
from steering.engine.channel import OutputChannel
from steering.engine.chunks import ChunkCosts
from steering.errors import EngineClosedError, InvalidRequestError, QueueFullError
from steering.requests import FinishReason, GenerationRequest, Limits, SamplingParams
from tests.mock_model import MockModel, mock_reference

PROMPTS = [[3, 4, 5], [7], [9, 9, 9, 9, 9, 9, 9], [2, 8]]


def _engine(model: MockModel | None = None, **limits: int) -> Engine:
    config = EngineConfig(limits=Limits(**limits)) if limits else EngineConfig()
    return Engine(model or MockModel(), special_ids=[0], eos_ids=[], config=config)


def _request(prompt: list[int], n: int = 8, **sampling: object) -> GenerationRequest:
    return GenerationRequest(tuple(prompt), SamplingParams(max_new_tokens=n, **sampling))  # type: ignore[arg-type]


def _drain(engine: Engine, limit: int = 1000) -> None:
    for _ in range(limit):
        if engine.idle:
            return
        engine.step()
    raise AssertionError("engine did not become idle")


def _tokens(channel: OutputChannel) -> tuple[list[int], FinishReason | None]:
    out = channel.take(0)
    assert out is not None
    return out.token_ids, out.finish_reason


def test_requests_arriving_mid_generation_get_their_own_tokens() -> None:
    engine = _engine()
    handles = [engine.add(_request(PROMPTS[0], 12)), engine.add(_request(PROMPTS[1], 5))]
    engine.step()
    engine.step()
    handles.append(engine.add(_request(PROMPTS[2], 9)))
    engine.step()
    handles.append(engine.add(_request(PROMPTS[3], 7)))
    _drain(engine)
    for prompt, n, handle in zip(PROMPTS, (12, 5, 9, 7), handles, strict=True):
        assert _tokens(handle.channel) == (mock_reference(prompt, n), FinishReason.LENGTH)


def test_a_new_request_does_not_wait_for_the_batch() -> None:
    engine = _engine()
    long = engine.add(_request(PROMPTS[0], 200))
    for _ in range(5):
        engine.step()
    short = engine.add(_request(PROMPTS[1], 1))
    engine.step()
    assert _tokens(short.channel)[1] is FinishReason.LENGTH
    assert not long.channel.closed


def test_finished_rows_leave_within_one_step_and_padding_is_dropped() -> None:
    engine = _engine()
    engine.add(_request([5] * 30, 2))
    short = engine.add(_request([6], 20))
    engine.step()
    engine.step()  # the long prompt's row finishes here
    assert engine.snapshot().running == 1
    # The short row's cache holds its prompt token and the one token fed since: no padding left.
    assert engine._batch is not None and engine._batch.attention_mask.shape[1] == 2
    _drain(engine)
    assert _tokens(short.channel)[0] == mock_reference([6], 20)


def test_abort_running_and_queued_rows() -> None:
    engine = _engine(max_active_rows=2)
    a, b, c = (engine.add(_request(p, 30)) for p in PROMPTS[:3])
    for _ in range(4):
        engine.step()
    engine.abort(b.key)
    engine.abort(c.key)  # still queued: only two rows may run
    engine.abort(c.key)  # twice is harmless
    _drain(engine)
    assert _tokens(a.channel) == (mock_reference(PROMPTS[0], 30), FinishReason.LENGTH)
    b_tokens, b_reason = _tokens(b.channel)
    assert (
        b_reason is FinishReason.ABORTED
        and b_tokens == mock_reference(PROMPTS[1], 30)[: len(b_tokens)]
    )
    assert _tokens(c.channel) == ([], FinishReason.ABORTED)
    engine.abort(a.key)  # after it finished: harmless
    engine.step()
    assert engine.idle and engine._batch is None


def test_finish_with_stop_reports_stop() -> None:
    engine = _engine()
    handle = engine.add(_request(PROMPTS[0], 50))
    engine.step()
    engine.finish(handle.key)
    engine.step()
    assert _tokens(handle.channel)[1] is FinishReason.STOP
    assert engine.idle


def test_eos_ends_a_row_unless_ignored() -> None:
    model = MockModel()
    engine = Engine(model, special_ids=[0], eos_ids=[mock_reference([7], 1)[0]])
    stops = engine.add(_request([7], 10))
    ignores = engine.add(_request([7], 10, ignore_eos=True))
    _drain(engine)
    assert _tokens(stops.channel) == (mock_reference([7], 1), FinishReason.EOS)
    assert _tokens(ignores.channel) == (mock_reference([7], 10), FinishReason.LENGTH)


def test_context_length_bounds_generation() -> None:
    engine = _engine(MockModel(context_length=10))
    handle = engine.add(_request([4] * 6, 50))
    _drain(engine)
    tokens, reason = _tokens(handle.channel)
    assert (len(tokens), reason) == (4, FinishReason.LENGTH)
    with pytest.raises(InvalidRequestError, match="more than the limit of 9"):  # context - 1
        engine.add(_request([4] * 10, 5))


def test_default_max_new_tokens() -> None:
    engine = _engine(default_max_new_tokens=3)
    handle = engine.add(_request([4], 0))
    _drain(engine)
    assert len(_tokens(handle.channel)[0]) == 3


def test_capacity_is_active_plus_queued_and_rejects_at_once() -> None:
    engine = _engine(max_active_rows=2, max_queued_requests=1)
    for prompt in PROMPTS[:3]:
        engine.add(_request(prompt))
    with pytest.raises(QueueFullError, match="at capacity"):
        engine.add(_request(PROMPTS[3]))
    _drain(engine)
    engine.add(_request(PROMPTS[3]))  # room again


def test_closed_engine_rejects_new_requests() -> None:
    engine = _engine()
    engine.close()
    with pytest.raises(EngineClosedError):
        engine.add(_request(PROMPTS[0]))


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (GenerationRequest(()), "prompt"),
        (GenerationRequest((1,) * 5000), "prompt"),
        (GenerationRequest((1, 999)), "prompt"),
        (_request([1], 5000), "sampling.max_new_tokens"),
        (_request([1], 4, temperature=float("nan")), "sampling.temperature"),
        (_request([1], 4, temperature=-1.0), "sampling.temperature"),
        (_request([1], 4, top_p=float("nan")), "sampling.top_p"),
        (_request([1], 4, top_p=1.5), "sampling.top_p"),
        (_request([1], 4, top_k=-1), "sampling.top_k"),
        (_request([1], 4, seed=2**64), "sampling.seed"),
        (_request([1], 4, top_logprobs=21), "sampling.top_logprobs"),
        (_request([1], 4, top_logprobs=-1), "sampling.top_logprobs"),
    ],
)
def test_invalid_requests_name_the_field(request_: GenerationRequest, field: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        _engine().add(request_)
    assert err.value.field == field


def test_a_failed_decode_fails_its_rows_and_the_engine_serves_on() -> None:
    model = MockModel()
    engine = _engine(model)
    a, b = engine.add(_request(PROMPTS[0], 10)), engine.add(_request(PROMPTS[1], 10))
    engine.step()
    model.fail_next = 1
    engine.step()
    for handle in (a, b):
        out = handle.channel.take(0)
        assert out is not None and out.finish_reason is FinishReason.ERROR
        assert out.error == "internal error in the model's forward pass"
    assert engine.idle
    c = engine.add(_request(PROMPTS[2], 6))
    _drain(engine)
    assert _tokens(c.channel) == (mock_reference(PROMPTS[2], 6), FinishReason.LENGTH)


def test_a_failed_prefill_fails_only_that_request() -> None:
    model = MockModel()
    engine = _engine(model)
    a = engine.add(_request(PROMPTS[0], 10))
    engine.step()
    b = engine.add(_request(PROMPTS[1], 10))
    engine.step()  # decodes a, then prefills b
    c = engine.add(_request(PROMPTS[2], 10))
    engine._decode([])  # a and b decode without failing
    model.fail_next = 1
    engine._admit([])  # c's prefill fails
    _drain(engine)
    assert _tokens(c.channel)[1] is FinishReason.ERROR
    assert _tokens(a.channel) == (mock_reference(PROMPTS[0], 10), FinishReason.LENGTH)
    assert _tokens(b.channel) == (mock_reference(PROMPTS[1], 10), FinishReason.LENGTH)


def test_slow_reader_gets_merged_tokens() -> None:
    engine = _engine()
    handle = engine.add(_request(PROMPTS[0], 6))
    engine.step()
    engine.step()
    first = handle.channel.take(0)
    assert first is not None and len(first.token_ids) == 2 and not first.finished
    _drain(engine)
    rest = handle.channel.take(0)
    assert rest is not None and rest.finished and rest.completion_tokens == 6
    assert first.token_ids + rest.token_ids == mock_reference(PROMPTS[0], 6)
    assert handle.channel.take(0) is None


def test_run_in_a_thread_and_stop() -> None:
    engine = _engine()
    thread = threading.Thread(target=engine.run)
    thread.start()
    handle = engine.add(_request(PROMPTS[0], 5))
    out, tokens = None, []
    while out is None or not out.finished:
        out = handle.channel.take(timeout=5)
        assert out is not None
        tokens += out.token_ids
    assert tokens == mock_reference(PROMPTS[0], 5)
    long = engine.add(_request(PROMPTS[1], 400))
    engine.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()
    last = None
    while (out := long.channel.take(0)) is not None:
        last = out
    assert last is not None and last.finish_reason is FinishReason.ABORTED
    assert engine.snapshot().running == 0


def test_run_survives_a_failing_step() -> None:
    engine = _engine()
    real_admit = engine._admit
    calls = {"n": 0}

    def flaky_admit(finished: list) -> tuple[int, int, int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug")
        return real_admit(finished)

    engine._admit = flaky_admit  # type: ignore[method-assign]
    thread = threading.Thread(target=engine.run)
    thread.start()
    try:
        failed = engine.add(_request(PROMPTS[0], 5))
        out = failed.channel.take(timeout=5)
        assert out is not None and out.finish_reason is FinishReason.ERROR
        assert out.error == "internal error in the engine"
        served = engine.add(_request(PROMPTS[1], 5))
        tokens: list[int] = []
        while (out := served.channel.take(timeout=5)) is not None:
            tokens += out.token_ids
            if out.finished:
                break
        assert tokens == mock_reference(PROMPTS[1], 5)
    finally:
        engine.stop()
        thread.join(5)


def test_stats_describe_each_step() -> None:
    seen = []
    engine = _engine()
    engine.on_step = seen.append
    engine.add(_request(PROMPTS[0], 3))
    engine.add(_request(PROMPTS[2], 1))
    _drain(engine)
    assert seen[0].prefill_requests == 2 and seen[0].prefill_tokens == 10
    assert sum(s.generated_tokens for s in seen) == 4
    done = [f for s in seen for f in s.finished]
    assert sorted(f.completion_tokens for f in done) == [1, 3]
    assert all(f.first_token_at is not None and f.finished_at >= f.queued_at for f in done)


def _budget_engine(model: MockModel, budget: int, **limits: int) -> Engine:
    config = EngineConfig(limits=Limits(**limits), prefill_tokens_per_step=budget)
    return Engine(model, special_ids=[0], eos_ids=[], config=config)


def _prefill_fed(model: MockModel) -> int:
    """Prompt tokens the model computed since the last call (padding included)."""
    fed = sum(rows * tokens for rows, tokens, decode in model.fed if not decode)
    model.fed.clear()
    return fed


def _prefill_cost(model: MockModel, costs: ChunkCosts) -> int:
    """What the prefill forwards since the last call cost, by the engine's cost rule."""
    cost = sum(costs.cost(tokens, start) for start, tokens in model.prefills)
    model.prefills.clear()
    return cost


def test_a_step_never_spends_more_than_the_budget() -> None:
    model = MockModel()
    engine = _budget_engine(model, 8)
    costs = ChunkCosts.for_model(model.config, 8)
    asks = [([3] * 20, 6), ([7, 2, 4], 9), ([5] * 7, 4), ([2] * 2, 12), ([4] * 17, 5)]
    handles = [engine.add(_request(p, n)) for p, n in asks[:3]]
    steps, spent = [], []
    for _ in range(3):
        engine.step()
        steps.append(_prefill_fed(model))
        spent.append(_prefill_cost(model, costs))
    handles += [engine.add(_request(p, n)) for p, n in asks[3:]]  # arrive mid-chunk
    while not engine.idle:
        engine.step()
        steps.append(_prefill_fed(model))
        spent.append(_prefill_cost(model, costs))
    assert max(spent) <= costs.per_step == costs.cost(8, 0)
    assert sum(steps) == sum(len(p) for p, _ in asks)  # no padding: only real tokens
    for (prompt, n), handle in zip(asks, handles, strict=True):
        assert _tokens(handle.channel) == (mock_reference(prompt, n), FinishReason.LENGTH)


def test_a_long_prompt_holds_running_rows_up_by_one_chunk_per_step() -> None:
    model = MockModel()
    engine = _budget_engine(model, 4)
    running = engine.add(_request([6, 1], 30))
    engine.step()
    long = engine.add(_request([9] * 22, 3))
    sizes = ChunkCosts.for_model(model.config, 4).bounds(22)
    assert sizes[0] == 4 and sizes[-2] < 4  # deeper chunks attend over more keys: fewer tokens
    got = []
    for _ in sizes:
        stats = engine.step()
        got.append((stats.prefill_tokens, stats.generated_tokens))
    # Every step decodes the running row once; the last chunk adds the long prompt's first token.
    assert got == [(size, 1) for size in sizes[:-1]] + [(sizes[-1], 2)]
    _drain(engine)
    assert _tokens(long.channel) == (mock_reference([9] * 22, 3), FinishReason.LENGTH)
    tokens = []
    while (out := running.channel.take(0)) is not None:
        tokens += out.token_ids
    assert tokens == mock_reference([6, 1], 30)


def test_an_abort_mid_chunk_frees_the_slot_and_leaves_the_others_exact() -> None:
    model = MockModel()
    engine = _budget_engine(model, 5, max_active_rows=2)
    a = engine.add(_request([3, 4], 20))
    engine.step()
    b = engine.add(_request([8] * 23, 5))
    engine.step()
    engine.step()  # b is two chunks in, in slot 1 beside a's decoding slot 0
    engine.abort(b.key)
    c = engine.add(_request([2] * 12, 6))  # takes the freed slot, its own chunks from token 0
    _drain(engine)
    out = b.channel.take(0)
    assert out is not None and out.finish_reason is FinishReason.ABORTED and not out.token_ids
    assert _tokens(c.channel) == (mock_reference([2] * 12, 6), FinishReason.LENGTH)
    tokens = []
    while (out := a.channel.take(0)) is not None:
        tokens += out.token_ids
    assert tokens == mock_reference([3, 4], 20)
    assert engine.idle and engine._prompts == [] and engine._cache.parked == [0] * 2


def test_a_prompt_in_a_slot_below_a_decoding_row_keeps_its_chunks() -> None:
    model = MockModel()
    engine = _budget_engine(model, 4, max_active_rows=2)
    first = engine.add(_request([5], 2))
    beside = engine.add(_request([3, 3], 25))
    engine.step()
    long = engine.add(_request([9, 8, 7] * 5, 4))
    engine.step()  # first ends: long is prefilled into slot 0, below beside's decoding slot 1
    assert [p.slot for p in engine._prompts] == [0] and engine._batch is not None
    assert engine._batch.slots == [1]
    _drain(engine)
    assert _tokens(first.channel) == (mock_reference([5], 2), FinishReason.LENGTH)
    assert _tokens(long.channel) == (mock_reference([9, 8, 7] * 5, 4), FinishReason.LENGTH)
    tokens = []
    while (out := beside.channel.take(0)) is not None:
        tokens += out.token_ids
    assert tokens == mock_reference([3, 3], 25)


def test_a_discovery_call_is_one_request_and_its_texts_keep_to_their_share() -> None:
    from steering.requests import InspectSpec

    engine = _engine(max_active_rows=4, max_queued_requests=1)  # 5 requests in flight
    engine.reserve()
    engine.reserve()  # two discovery calls, of any number of texts
    texts = [
        engine.add(GenerationRequest((3, 4, i), inspect=InspectSpec()), reserved=True)
        for i in range(12)
    ]
    generates = [engine.add(_request(PROMPTS[i], 6)) for i in range(3)]
    with pytest.raises(QueueFullError):
        engine.add(_request(PROMPTS[3], 6))
    with pytest.raises(QueueFullError):
        engine.reserve()
    while not engine.idle:
        engine.step()
        assert sum(row.reserved for row in engine._running.values()) <= engine.discovery_rows
    assert all(_tokens(t.channel)[1] is FinishReason.PREFILLED for t in texts)
    for i, handle in enumerate(generates):
        assert _tokens(handle.channel) == (mock_reference(PROMPTS[i], 6), FinishReason.LENGTH)
    engine.release()
    engine.release()
    engine.add(_request(PROMPTS[3], 6))
