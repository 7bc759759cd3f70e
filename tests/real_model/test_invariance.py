"""On the real demo model, in float32 and in bfloat16 (what `--dtype auto` picks on CPUs with
native bf16), configured as the server's default configures it (in bfloat16 every decode reads
the slot's whole context: without it this test saw a short prompt's text change beside a long
one): a request's greedy tokens are the request's alone whatever shares its batch — long
prompts prefilled in chunks across steps beside short ones, requests joining while a prompt is
mid-chunk, a long prompt aborted mid-chunk, steered and unsteered rows together."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from steering import LoadedModel, SaeAttachment, load_model, load_sae
from steering.demo.gemma import DemoAssets
from steering.edits import EditMode, FeatureEdit
from steering.engine import Engine, EngineConfig
from steering.engine.engine import RequestHandle
from steering.requests import GenerationRequest, Limits, SamplingParams

pytestmark = pytest.mark.real_model

NEW = 16
BUDGET = 24  # a small prefill budget: the long prompt takes several steps
LONG = " ".join(["The committee read the budget report line by line before the vote."] * 6)
SHORT = ["My favourite breakfast is", "The meeting tomorrow will cover", "Yesterday my friend"]


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def setup(request: pytest.FixtureRequest, demo: DemoAssets) -> Iterator[tuple[Engine, LoadedModel]]:
    lm = load_model(demo.model_dir, dtype=request.param)
    sae = SaeAttachment(demo.sae_name, load_sae(demo.sae_dir), demo.layer)
    config = EngineConfig(
        Limits(max_active_rows=6),
        prefill_tokens_per_step=BUDGET,
        decode_shapes="batch" if request.param == torch.float32 else "context",
    )
    yield Engine.from_loaded(lm, [sae], config), lm


def _request(lm: LoadedModel, text: str, demo: DemoAssets, steer: bool) -> GenerationRequest:
    edits = (FeatureEdit(demo.sae_name, 632, EditMode.SET, 600.0),) if steer else ()
    sampling = SamplingParams(max_new_tokens=NEW, ignore_eos=True)
    return GenerationRequest(tuple(lm.tokenizer(text).input_ids), sampling, edits)


def _tokens(handle: RequestHandle) -> list[int]:
    tokens: list[int] = []
    while (chunk := handle.channel.take(0)) is not None:
        tokens += chunk.token_ids
    return tokens


def _run(engine: Engine, arrivals: list[list[GenerationRequest | str]]) -> list[list[int]]:
    """Step the engine, adding arrivals[i] before step i; "abort" aborts the last one added."""
    handles: list[RequestHandle] = []
    aborted: set[int] = set()
    for step in range(10_000):
        for item in arrivals[step] if step < len(arrivals) else ():
            if item == "abort":
                engine.abort(handles[-1].key)
                aborted.add(len(handles) - 1)
            else:
                assert isinstance(item, GenerationRequest)
                handles.append(engine.add(item))
        if engine.idle and step >= len(arrivals):
            break
        engine.step()
    return [_tokens(h) for i, h in enumerate(handles) if i not in aborted]


def test_greedy_tokens_are_the_requests_alone_in_every_mix(
    setup: tuple[Engine, LoadedModel], demo: DemoAssets
) -> None:
    engine, lm = setup
    asks = [(LONG, False), (SHORT[0], True), (SHORT[1], False), (LONG, True), (SHORT[2], False)]
    requests = [_request(lm, text, demo, steer) for text, steer in asks]
    assert len(requests[0].prompt_ids) > 3 * BUDGET
    alone = [_run(engine, [[r]])[0] for r in requests]
    assert alone[0] != alone[3]  # the edit changes the long prompt's text
    mixed = _run(
        engine,
        [
            [requests[0], requests[1]],  # a long prompt and a short one together
            [requests[2]],  # joins while the long prompt is mid-chunk
            [_request(lm, LONG + " Again.", demo, False), "abort"],  # aborted before its chunks
            [requests[3]],
            [],
            [requests[4]],  # joins mid-chunk of the second long prompt
        ],
    )
    assert mixed == alone
    # Four identical requests at once equal the request alone, as do they beside a steered one.
    same = _run(engine, [[requests[1]] * 4 + [requests[2]]])
    assert same == [alone[1]] * 4 + [alone[2]]
