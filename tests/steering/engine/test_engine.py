"""The engine on tiny Gemmas: greedy parity with `generate`, steering, aborts and faults."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from steering import EditMode, FeatureEdit, LoadedModel, SaeAttachment, StepTables, load_model
from steering.demo.toy import random_sae
from steering.engine import Engine
from steering.engine.channel import OutputChannel
from steering.errors import InvalidRequestError
from steering.frontend.detokenize import TextStream
from steering.models.gemma import decoder_layers
from steering.requests import FinishReason, GenerationRequest, SamplingParams
from steering.steer.hooks import SteeringHooks
from steering.steer.tables import build_tables, steerable_positions

PROMPTS = [
    "Tell me about the sea",
    "Hi",
    "The forest was tall and the moss was green and the air",
    "Thank you so much!",
    "A small bird sang",
]


@pytest.fixture(params=["gemma2", "gemma3"])
def lm(request: pytest.FixtureRequest, model_folders: dict[str, Path]) -> LoadedModel:
    # A fresh load per test: the engine installs hooks on its model.
    return load_model(model_folders[request.param], dtype=torch.float32)


def _attachments(lm: LoadedModel) -> list[SaeAttachment]:
    d = int(lm.model.config.get_text_config().hidden_size)
    return [
        SaeAttachment("early", random_sae(d, 128, seed=1, threshold=0.02), layer=1),
        SaeAttachment("late", random_sae(d, 96, seed=2, threshold=0.02), layer=2),
    ]


EDITS: list[tuple[FeatureEdit, ...]] = [
    (FeatureEdit("early", 5, EditMode.SET, 6.0), FeatureEdit("late", 3, EditMode.ADD, 4.0)),
    (),
    (FeatureEdit("late", 7, EditMode.SCALE, 5.0, only_when_active=True),),
    (FeatureEdit("early", 9, EditMode.ABLATE), FeatureEdit("early", 11, EditMode.SET, 8.0)),
    (),
]


@contextmanager
def _steered(lm: LoadedModel, hooks: SteeringHooks, edits: Sequence[FeatureEdit]) -> Iterator[None]:
    """Steer every forward of `lm.model` inside the block, as the engine would for one row."""
    stack = ExitStack()

    def before(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs["input_ids"]
        tables = StepTables(
            build_tables([edits], hooks.saes), steerable_positions(ids, lm.special_ids)
        )
        stack.enter_context(hooks.step(tables))

    handles = [
        lm.model.register_forward_pre_hook(before, with_kwargs=True),
        lm.model.register_forward_hook(lambda *_: stack.close()),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _reference(
    lm: LoadedModel, hooks: SteeringHooks, prompt: list[int], edits: Sequence[FeatureEdit], n: int
) -> list[int]:
    """Greedy `model.generate` alone, steered through the core's hooks when there are edits."""
    with torch.no_grad(), _steered(lm, hooks, edits) if edits else ExitStack():
        out = lm.model.generate(
            torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None
        )
    return out[0, len(prompt) :].tolist()


def _collect(channel: OutputChannel) -> tuple[list[int], FinishReason | None]:
    tokens, reason = [], None
    while (out := channel.take(0)) is not None:
        tokens += out.token_ids
        reason = out.finish_reason or reason
    return tokens, reason


def _ids(lm: LoadedModel, text: str) -> list[int]:
    return list(lm.tokenizer(text).input_ids)


def _run(engine: Engine, limit: int = 2000) -> None:
    for _ in range(limit):
        if engine.idle:
            return
        engine.step()
    raise AssertionError("engine never became idle")


def _greedy(prompt: list[int], edits: tuple[FeatureEdit, ...], n: int) -> GenerationRequest:
    return GenerationRequest(
        tuple(prompt), SamplingParams(max_new_tokens=n, ignore_eos=True), edits
    )


def test_greedy_tokens_equal_generate_alone_with_mixed_arrivals(lm: LoadedModel) -> None:
    engine = Engine.from_loaded(lm, _attachments(lm))
    prompts = [_ids(lm, p) for p in PROMPTS]
    lengths = [14, 9, 12, 6, 10]
    handles = {}
    schedule = {0: [0, 1], 2: [2], 3: [3], 7: [4]}  # step -> requests added before it
    for step in range(8):
        for i in schedule.get(step, []):
            handles[i] = engine.add(_greedy(prompts[i], EDITS[i], lengths[i]))
        engine.step()
    _run(engine)
    for i, handle in handles.items():
        tokens, reason = _collect(handle.channel)
        assert reason is FinishReason.LENGTH
        assert tokens == _reference(lm, engine.hooks, prompts[i], EDITS[i], lengths[i]), PROMPTS[i]


def test_steering_changes_the_output_of_steered_rows_only(lm: LoadedModel) -> None:
    engine = Engine.from_loaded(lm, _attachments(lm))
    prompt = _ids(lm, PROMPTS[0])
    plain = engine.add(_greedy(prompt, (), 12))
    steered = engine.add(_greedy(prompt, (FeatureEdit("early", 5, EditMode.SET, 40.0),), 12))
    _run(engine)
    plain_tokens, steered_tokens = _collect(plain.channel)[0], _collect(steered.channel)[0]
    assert plain_tokens == _reference(lm, engine.hooks, prompt, (), 12)
    assert steered_tokens != plain_tokens


def test_late_request_gets_its_first_token_before_the_long_one_ends(lm: LoadedModel) -> None:
    engine = Engine.from_loaded(lm)
    long = engine.add(_greedy(_ids(lm, PROMPTS[2]), (), 40))
    for _ in range(5):
        engine.step()
    short = engine.add(_greedy(_ids(lm, PROMPTS[1]), (), 3))
    engine.step()
    first = short.channel.take(0)
    assert first is not None and len(first.token_ids) == 1
    assert not long.channel.closed
    _run(engine)


def test_abort_mid_generation_leaves_others_exact_and_engine_idle(lm: LoadedModel) -> None:
    attachments = _attachments(lm)
    engine = Engine.from_loaded(lm, attachments)
    hooks_per_layer = [len(layer._forward_hooks) for layer in decoder_layers(lm.model)]
    prompts = [_ids(lm, p) for p in PROMPTS[:3]]
    handles = [engine.add(_greedy(p, EDITS[i], 16)) for i, p in enumerate(prompts)]
    for _ in range(5):
        engine.step()
    engine.abort(handles[1].key)
    _run(engine)
    for i in (0, 2):
        assert _collect(handles[i].channel) == (
            _reference(lm, engine.hooks, prompts[i], EDITS[i], 16),
            FinishReason.LENGTH,
        )
    aborted, reason = _collect(handles[1].channel)
    assert reason is FinishReason.ABORTED and 0 < len(aborted) < 16
    assert engine.idle and engine._batch is None
    assert engine.snapshot().running == engine.snapshot().waiting == 0
    assert [len(layer._forward_hooks) for layer in decoder_layers(lm.model)] == hooks_per_layer


def test_seeded_sampling_reproduces_and_seeds_differ(lm: LoadedModel) -> None:
    engine = Engine.from_loaded(lm)
    prompt = tuple(_ids(lm, PROMPTS[0]))

    def sample(seed: int | None, **params: Any) -> tuple[list[int], int | None]:
        sampling = SamplingParams(
            max_new_tokens=24, temperature=1.5, seed=seed, ignore_eos=True, **params
        )
        handle = engine.add(GenerationRequest(prompt, sampling))
        other = engine.add(_greedy(list(prompt), (), 5))  # company in the batch changes nothing
        _run(engine)
        _collect(other.channel)
        out, seed_used = [], None
        while (chunk := handle.channel.take(0)) is not None:
            out += chunk.token_ids
            seed_used = chunk.seed
        return out, seed_used

    first, seed = sample(7)
    assert seed == 7
    assert sample(7)[0] == first
    assert sample(8)[0] != first
    assert sample(7, top_k=5)[0] != first
    assert sample(7, top_p=0.5)[0] != first
    fresh, fresh_seed = sample(None)
    assert fresh_seed is not None and sample(fresh_seed)[0] == fresh


def test_eos_of_the_chat_template_ends_generation(lm: LoadedModel) -> None:
    engine = Engine.from_loaded(lm)
    end_of_turn = lm.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert {1, end_of_turn} <= engine.eos_ids


def test_an_exception_in_a_forward_fails_that_step_only(lm: LoadedModel) -> None:
    engine = Engine.from_loaded(lm)
    layer = decoder_layers(lm.model)[1]
    state = {"fail": False}

    def explode(module: Any, args: Any, output: Any) -> None:
        if state["fail"]:
            state["fail"] = False
            raise RuntimeError("injected")

    handle = layer.register_forward_hook(explode)
    try:
        doomed = [engine.add(_greedy(_ids(lm, p), (), 10)) for p in PROMPTS[:2]]
        engine.step()
        state["fail"] = True
        engine.step()
        for h in doomed:
            assert _collect(h.channel)[1] is FinishReason.ERROR
        assert engine.idle
        prompt = _ids(lm, PROMPTS[3])
        fine = engine.add(_greedy(prompt, (), 8))
        _run(engine)
        assert _collect(fine.channel) == (
            _reference(lm, engine.hooks, prompt, (), 8),
            FinishReason.LENGTH,
        )
    finally:
        handle.remove()


def test_a_non_finite_row_fails_alone(lm: LoadedModel) -> None:
    engine = Engine.from_loaded(lm)
    layer = decoder_layers(lm.model)[2]
    prompts = [_ids(lm, p) for p in PROMPTS[:2]]
    handles = [engine.add(_greedy(p, (), 10)) for p in prompts]
    engine.step()
    poison_row = engine._batch.keys.index(handles[0].key) if engine._batch else 0

    def poison(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        if out.shape[0] == 2:
            out[poison_row] = float("nan")
        return out

    hook = layer.register_forward_hook(poison)
    try:
        engine.step()
    finally:
        hook.remove()
    _run(engine)
    assert _collect(handles[0].channel)[1] is FinishReason.ERROR
    assert _collect(handles[1].channel) == (
        _reference(lm, engine.hooks, prompts[1], (), 10),
        FinishReason.LENGTH,
    )


def test_stop_string_found_at_the_edge_finishes_the_request(lm: LoadedModel) -> None:
    engine = Engine.from_loaded(lm)
    prompt = _ids(lm, PROMPTS[0])
    free = engine.add(_greedy(prompt, (), 30))
    _run(engine)
    full_text = lm.tokenizer.decode(_collect(free.channel)[0], skip_special_tokens=True)
    stop = full_text[len(full_text) // 2 : len(full_text) // 2 + 3]
    assert stop.strip(), full_text
    handle = engine.add(_greedy(prompt, (), 30))
    stream, text, reason = TextStream(lm.tokenizer, [stop]), "", None
    while reason is None:
        engine.step()
        while (out := handle.channel.take(0)) is not None:
            already_stopped = stream.stopped
            text += stream.push(out.token_ids)
            reason = out.finish_reason or reason
            if stream.stopped and not already_stopped:
                engine.finish(handle.key)
    assert reason is FinishReason.STOP
    assert text == full_text[: full_text.index(stop)]
    assert engine.idle


def test_a_long_prompt_is_refused_naming_the_limit_in_force(lm: LoadedModel) -> None:
    """The configured limit (4096) is more than the context allows: the engine names what it
    really accepts, the limit DescribeModel reports."""
    engine = Engine.from_loaded(lm)
    in_force = engine.limits.max_prompt_tokens
    assert in_force == engine.context_length - 1 < engine.config.limits.max_prompt_tokens
    for n in (in_force + 1, engine.config.limits.max_prompt_tokens + 1):
        with pytest.raises(InvalidRequestError) as err:
            engine.add(GenerationRequest((5,) * n))
        assert err.value.field == "prompt"
        assert f"limit of {in_force}" in err.value.message, err.value.message
        assert str(engine.config.limits.max_prompt_tokens) not in err.value.message
    engine.add(GenerationRequest((5,) * in_force))  # at the limit: taken


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_a_row_without_edits_ignores_non_finite_weights_of_unedited_features(
    lm: LoadedModel, bad: float
) -> None:
    """Unused columns of the per-slot tables point at feature 0: even where its weights are not
    finite (loading refuses such files; built here directly), they never touch a row's output."""
    d = int(lm.model.config.get_text_config().hidden_size)
    sae = random_sae(d, 128, seed=1, threshold=0.02)
    for tensor in (sae.W_enc[:, 0], sae.W_dec[0], sae.b_enc[:1], sae.threshold[:1]):
        tensor.fill_(bad)
    engine = Engine.from_loaded(lm, [SaeAttachment("early", sae, layer=1)])
    prompt = _ids(lm, PROMPTS[0])
    plain = engine.add(_greedy(prompt, (), 8))
    steered = engine.add(_greedy(prompt, (FeatureEdit("early", 5, EditMode.SET, 6.0),), 8))
    _run(engine)
    assert _collect(plain.channel) == (
        _reference(lm, engine.hooks, prompt, (), 8),
        FinishReason.LENGTH,
    )
    assert _collect(steered.channel)[1] is FinishReason.LENGTH


@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
def test_readings_rules_and_receipts_are_the_same_in_chunks(
    name: str, model_folders: dict[str, Path]
) -> None:
    from steering.engine import EngineConfig
    from steering.requests import FeatureRef, InspectSpec, Rule

    def run(budget: int) -> list[Any]:
        lm = load_model(model_folders[name], dtype=torch.float32)
        config = EngineConfig(prefill_tokens_per_step=budget)
        engine = Engine.from_loaded(lm, _attachments(lm), config)
        prompt = tuple(_ids(lm, PROMPTS[2]) + _ids(lm, PROMPTS[0]))
        sampling = SamplingParams(max_new_tokens=8, ignore_eos=True)
        apply = Rule(
            FeatureRef("early", 5), -1.0, apply=(FeatureEdit("late", 8, EditMode.SET, 25.0),)
        )
        spec = InspectSpec(
            ("early", "late"), top_k=4, features=(FeatureRef("late", 3),), means=True
        )
        requests = [
            GenerationRequest(
                prompt, sampling, EDITS[2], watch=(FeatureRef("late", 3),), rules=(apply,)
            ),
            GenerationRequest(prompt, sampling, EDITS[0], inspect=spec),
            GenerationRequest(
                prompt, sampling, EDITS[3], rules=(Rule(FeatureRef("early", 5), -1.0, stop=True),)
            ),
        ]
        handles = [engine.add(r) for r in requests]
        _run(engine)
        outputs = []
        for handle in handles:
            outs = []
            while (out := handle.channel.take(0)) is not None:
                outs.append(out)
            outputs.append(outs)
        return outputs

    whole, chunked = run(4096), run(3)
    for one, other in zip(whole, chunked, strict=True):
        assert [t for o in one for t in o.token_ids] == [t for o in other for t in o.token_ids]
        assert one[-1].finish_reason is other[-1].finish_reason
        assert one[-1].receipts == other[-1].receipts
        watched = [x for o in one for w in o.watched for x in w]
        assert watched == pytest.approx([x for o in other for w in o.watched for x in w], abs=1e-4)
    assert whole[0][-1].receipts[-1].applied > 0  # the rule fired in the prompt, applied after
    assert whole[2][-1].finish_reason is FinishReason.CONDITION
    a, b = whole[1][-1].readings, chunked[1][-1].readings
    assert a is not None and b is not None and len(a.named) == len(b.named) > 3
    named = [x for r in a.named for x in r]
    assert named == pytest.approx([x for r in b.named for x in r], abs=1e-4)
    for ta, tb in zip(a.top, b.top, strict=True):
        for sae in ("early", "late"):
            assert [i for i, _ in ta[sae]] == [i for i, _ in tb[sae]]
            assert [v for _, v in ta[sae]] == pytest.approx([v for _, v in tb[sae]], abs=1e-4)
    for sae in ("early", "late"):
        assert torch.allclose(a.sums[sae], b.sums[sae], atol=1e-3)
