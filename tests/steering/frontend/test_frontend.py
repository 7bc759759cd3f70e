"""The front end serves whole text requests without gRPC: prompt and chat, stop strings, cancel,
errors named to the field, and the same tokens the engine gives for the same ids."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import aclosing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from steering import EditMode, FeatureEdit, SaeAttachment, load_model
from steering.demo.toy import random_sae
from steering.discovery.catalog import Catalog
from steering.engine import Engine
from steering.engine.stats import AdmittedRequest
from steering.errors import EngineClosedError, InvalidRequestError
from steering.frontend import FrontEnd, TextChunk
from steering.requests import (
    ChatMessage,
    ContrastRequest,
    FeatureRef,
    FinishReason,
    GenerationRequest,
    InspectRequest,
    Rule,
    SamplingParams,
    TextRequest,
)
from tests.frontends import running_frontend

GREEDY = SamplingParams(max_new_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def frontend(model_folders: dict[str, Path]) -> Iterator[FrontEnd]:
    loaded = load_model(model_folders["gemma2"], dtype=torch.float32)
    sae = SaeAttachment("s", random_sae(64, 32, seed=3, threshold=0.02), layer=1)
    front = FrontEnd(Engine.from_loaded(loaded, [sae]), loaded.tokenizer, name="tiny")
    front.start()
    yield front
    front.stop()


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def _collect(front: FrontEnd, request: TextRequest) -> list[TextChunk]:
    async with aclosing(front.generate(request)) as chunks:
        return [chunk async for chunk in chunks]


def test_a_prompt_streams_text_that_decodes_its_tokens(frontend: FrontEnd) -> None:
    chunks = _run(_collect(frontend, TextRequest(prompt="Tell me about the sea", sampling=GREEDY)))
    ids = [i for c in chunks for i in c.token_ids]
    last = chunks[-1]
    assert last.finish_reason is FinishReason.LENGTH and last.completion_tokens == 12 == len(ids)
    assert all(c.finish_reason is None for c in chunks[:-1])
    text = "".join(c.text for c in chunks)
    assert text == frontend.tokenizer.decode(ids, skip_special_tokens=True)
    prompt_ids = frontend.tokenizer("Tell me about the sea").input_ids
    assert last.prompt_tokens == len(prompt_ids)


def test_greedy_text_equals_the_engine_on_the_same_ids(frontend: FrontEnd) -> None:
    """The front end adds nothing to the engine's tokens: the same ids as a direct `add`."""
    edits = (FeatureEdit("s", 4, EditMode.SET, 8.0),)
    chunks = _run(_collect(frontend, TextRequest(prompt="Hi", sampling=GREEDY, edits=edits)))
    plain = _run(_collect(frontend, TextRequest(prompt="Hi", sampling=GREEDY)))
    steered_ids = [i for c in chunks for i in c.token_ids]
    assert steered_ids != [i for c in plain for i in c.token_ids]  # the edit did something

    ids = tuple(frontend.tokenizer("Hi").input_ids)
    handle = frontend.engine.add(GenerationRequest(ids, GREEDY, edits))
    direct: list[int] = []
    while True:
        out = handle.channel.take(30)
        assert out is not None
        direct += out.token_ids
        if out.finished:
            break
    assert steered_ids == direct


def test_a_chat_renders_with_exactly_one_bos(frontend: FrontEnd) -> None:
    chat = (ChatMessage("user", "Tell me a story"),)
    ids = frontend.tokenize(TextRequest(chat=chat))
    bos = frontend.tokenizer.bos_token_id
    assert ids[0] == bos and bos not in ids[1:]
    chunks = _run(_collect(frontend, TextRequest(chat=chat, sampling=GREEDY)))
    assert chunks[-1].prompt_tokens == len(ids)


def test_a_stop_string_ends_the_text_before_it(frontend: FrontEnd) -> None:
    full = "".join(
        c.text for c in _run(_collect(frontend, TextRequest(prompt="The sea", sampling=GREEDY)))
    )
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full  # a stop string the greedy text surely holds
    sampling = SamplingParams(max_new_tokens=12, ignore_eos=True, stop=(stop,))
    chunks = _run(_collect(frontend, TextRequest(prompt="The sea", sampling=sampling)))
    assert chunks[-1].finish_reason is FinishReason.STOP
    text = "".join(c.text for c in chunks)
    assert text == full[: full.index(stop)]
    assert _wait_idle(frontend)


def _wait_idle(front: FrontEnd) -> bool:
    for _ in range(500):
        if front.engine.idle:
            return True
        time.sleep(0.01)
    return False


def test_leaving_the_stream_cancels_the_request(frontend: FrontEnd) -> None:
    async def first_chunk_then_leave() -> TextChunk:
        sampling = SamplingParams(max_new_tokens=500, ignore_eos=True)
        stream = frontend.generate(TextRequest(prompt="The sea", sampling=sampling))
        async with aclosing(stream) as chunks:
            return await anext(aiter(chunks))

    chunk = _run(first_chunk_then_leave())
    assert chunk.token_ids
    assert _wait_idle(frontend)  # the row was freed, long before 500 tokens
    assert frontend.in_flight == 0


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (TextRequest(), "input"),
        (TextRequest(prompt="a", chat=(ChatMessage("user", "b"),)), "input"),
        (TextRequest(prompt="   "), "prompt"),
        (TextRequest(chat=()), "chat.messages"),
        (TextRequest(chat=(ChatMessage("robot", "hi"),)), "chat.messages[0].role"),
        (TextRequest(prompt="x", sampling=SamplingParams(top_p=2.0)), "sampling.top_p"),
        (TextRequest(prompt="x", sampling=SamplingParams(stop=("",))), "sampling.stop[0]"),
        (TextRequest(prompt="x", sampling=SamplingParams(stop=("a",) * 9)), "sampling.stop"),
        (TextRequest(prompt="x", edits=(FeatureEdit("s", 99, EditMode.ADD, 1.0),)), "edits[0]"),
        (TextRequest(prompt="x" * 10_000_000), "prompt"),
    ],
)
def test_bad_requests_name_the_field(frontend: FrontEnd, request_: TextRequest, field: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        _run(_collect(frontend, request_))
    assert err.value.field.startswith(field)
    assert frontend.engine.idle


def test_a_chat_without_a_template_is_refused_naming_chat(
    model_folders: dict[str, Path],
) -> None:
    loaded = load_model(model_folders["gemma2"], dtype=torch.float32)
    loaded.tokenizer.chat_template = None
    front = FrontEnd(Engine.from_loaded(loaded), loaded.tokenizer)
    assert not front.chat and not front.describe().chat
    front.start()
    try:
        with pytest.raises(InvalidRequestError) as err:
            _run(_collect(front, TextRequest(chat=(ChatMessage("user", "hi"),))))
        assert err.value.field == "chat"
    finally:
        front.stop()


def test_admissions_are_reported_and_limits_fit_the_context(frontend: FrontEnd) -> None:
    seen: list[AdmittedRequest] = []
    frontend.on_admitted = seen.append
    try:
        edits = (FeatureEdit("s", 1, EditMode.ABLATE),)
        _run(_collect(frontend, TextRequest(prompt="Hi", edits=edits, request_id="r1")))
    finally:
        frontend.on_admitted = None
    assert seen == [AdmittedRequest("r1", len(frontend.tokenizer("Hi").input_ids), edits)]
    served = frontend.describe()
    assert served.name == "tiny" and served.chat
    assert served.limits.max_prompt_tokens == min(4096, served.context_length - 1)
    assert [a.name for a in served.saes] == ["s"]


def test_search_of_a_served_sae_without_labels_finds_nothing(frontend: FrontEnd) -> None:
    assert _run(frontend.search("sea", sae="s")) == []
    with pytest.raises(InvalidRequestError) as err:
        _run(frontend.search("sea", sae="nope"))
    assert err.value.field == "sae"


def test_discovery_without_any_sae_answers_empty(model_folders: dict[str, Path]) -> None:
    loaded = load_model(model_folders["gemma2"], dtype=torch.float32)
    front = FrontEnd(Engine.from_loaded(loaded), loaded.tokenizer)
    front.start()
    try:
        assert _run(front.contrast(ContrastRequest(("a sea",), ("a city",)))) == ((), ())
        tokens = _run(front.inspect(InspectRequest(TextRequest(prompt="a sea"))))
        assert tokens and all(not t.top and not t.features for t in tokens)
    finally:
        front.stop()


def test_a_contrast_in_flight_when_the_front_end_closes_still_finishes(
    model_folders: dict[str, Path],
) -> None:
    """Closing (a drain) refuses new calls only: the texts of a call already admitted still
    reach the engine, however many wait for a row."""
    with running_frontend(model_folders["gemma2"], [("s", 1, 32, 3)]) as front:
        texts = tuple(f"text {i} about the sea" for i in range(2 * front.limits.max_active_rows))
        admitted: list[AdmittedRequest] = []

        def close_at_the_first(request: AdmittedRequest) -> None:
            admitted.append(request)
            front.close()

        front.on_admitted = close_at_the_first
        toward_a, toward_b = _run(front.contrast(ContrastRequest(texts, ("a city street",))))
        assert len(admitted) == len(texts) + 1
        assert toward_a or toward_b
        assert front.in_flight == 0
        # New calls of every kind are refused.
        with pytest.raises(EngineClosedError):
            _run(front.contrast(ContrastRequest(("a",), ("b",))))
        with pytest.raises(EngineClosedError):
            _run(front.inspect(InspectRequest(TextRequest(prompt="a sea"))))
        with pytest.raises(EngineClosedError):
            _run(_collect(front, TextRequest(prompt="Hi", sampling=GREEDY)))
        with pytest.raises(EngineClosedError):
            _run(front.search("sea"))


def test_search_runs_off_the_event_loop_and_bounds_the_query(
    frontend: FrontEnd, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    search = frontend.catalog.search

    def recorded(query: str, **kwargs: Any) -> list[Any]:
        threads.append(threading.current_thread())
        return search(query, **kwargs)

    monkeypatch.setattr(frontend.catalog, "search", recorded)
    loop_threads: list[threading.Thread] = []

    async def call() -> list[Any]:
        loop_threads.append(threading.current_thread())
        return await frontend.search("sea")

    assert _run(call()) == []
    assert threads and threads[0] is not loop_threads[0]  # the loop stays free for streams
    longest = frontend.limits.max_query_chars
    assert _run(frontend.search("sea " * (longest // 4))) == []  # at the limit: accepted
    with pytest.raises(InvalidRequestError) as err:
        _run(frontend.search("s" * (longest + 1)))
    assert err.value.field == "query" and str(longest) in err.value.message


def test_an_inspect_whose_reply_could_pass_the_message_limit_is_refused_before_the_work(
    model_folders: dict[str, Path],
) -> None:
    loaded = load_model(model_folders["gemma2"], dtype=torch.float32)
    sae = SaeAttachment("s", random_sae(64, 32, seed=3, threshold=0.02), layer=1)
    labels = Catalog({"s": {i: f"label {i} " + "x" * 300 for i in range(32)}})
    front = FrontEnd(
        Engine.from_loaded(loaded, [sae]),
        loaded.tokenizer,
        catalog=labels,
        max_message_bytes=16 * 1024,
    )
    admitted: list[AdmittedRequest] = []
    front.on_admitted = admitted.append
    front.start()
    try:
        text = TextRequest(prompt="The sea was calm and the ships sailed on " * 4)
        with pytest.raises(InvalidRequestError) as err:
            _run(front.inspect(InspectRequest(text, top_k=32)))
        assert err.value.field == "input" and "max_message_bytes" in err.value.message
        assert "16384" in err.value.message
        assert admitted == []  # refused before the engine read anything
        small = _run(front.inspect(InspectRequest(TextRequest(prompt="sea"), top_k=1)))
        assert small and len(admitted) == 1
    finally:
        front.stop()


def test_usage_counts_the_tokens_given_when_the_engine_ran_ahead_of_a_stop(
    frontend: FrontEnd,
) -> None:
    """The engine may step past a stop string before the front end reads it: usage still
    counts the tokens the caller was given, the same every time."""
    sampling = SamplingParams(max_new_tokens=12, ignore_eos=True)
    plain = _run(_collect(frontend, TextRequest(prompt="The sea", sampling=sampling)))
    ids = [i for c in plain for i in c.token_ids]
    full = "".join(c.text for c in plain)
    stop = full[len(full) // 3 : len(full) // 3 + 2]
    assert stop.strip(), full
    decode = frontend.tokenizer.decode
    given = next(n for n in range(1, 13) if stop in decode(ids[:n], skip_special_tokens=True))
    assert given < 12  # the engine has steps left to run ahead with
    stopped = replace(sampling, stop=(stop,))

    def engine_runs_ahead(_: AdmittedRequest) -> None:
        # Hold the event loop (so the front end reads nothing) until the row has finished.
        assert _wait_idle(frontend)

    for hold in (None, engine_runs_ahead):
        frontend.on_admitted = hold
        try:
            chunks = _run(_collect(frontend, TextRequest(prompt="The sea", sampling=stopped)))
        finally:
            frontend.on_admitted = None
        delivered = [i for c in chunks for i in c.token_ids]
        last = chunks[-1]
        assert last.finish_reason is FinishReason.STOP
        assert delivered == ids[:given]
        assert last.completion_tokens == given
        assert "".join(c.text for c in chunks) == full[: full.index(stop)]


def test_a_relative_edit_is_the_absolute_edit_times_the_typical_max(
    model_folders: dict[str, Path],
) -> None:
    """`set:1.5x` on a feature of typical maximum 5 runs exactly as `set:7.5`; the receipt shows
    7.5; a feature without a typical maximum is refused naming the edit's `relative` field."""
    loaded = load_model(model_folders["gemma2"], dtype=torch.float32)
    sae = SaeAttachment("s", random_sae(64, 32, seed=3, threshold=0.02), layer=1)
    catalog = Catalog({}, typical_max={"s": {4: 5.0}})
    front = FrontEnd(Engine.from_loaded(loaded, [sae]), loaded.tokenizer, catalog=catalog)
    front.start()
    try:
        relative = (FeatureEdit("s", 4, EditMode.SET, 1.5, relative=True),)
        absolute = (FeatureEdit("s", 4, EditMode.SET, 7.5),)
        got = _run(_collect(front, TextRequest(prompt="Hi", sampling=GREEDY, edits=relative)))
        want = _run(_collect(front, TextRequest(prompt="Hi", sampling=GREEDY, edits=absolute)))
        plain = _run(_collect(front, TextRequest(prompt="Hi", sampling=GREEDY)))
        ids = [[i for c in chunks for i in c.token_ids] for chunks in (got, want, plain)]
        assert ids[0] == ids[1] != ids[2]
        assert [r.edit for r in got[-1].receipts] == list(absolute)
        rule = Rule(
            FeatureRef("s", 1), 0.5, apply=(FeatureEdit("s", 4, EditMode.ADD, 2.0, relative=True),)
        )
        resolved = front._resolved(TextRequest(prompt="Hi", rules=(rule,)))
        assert resolved.rules[0].apply == (FeatureEdit("s", 4, EditMode.ADD, 10.0),)
        bad = [
            (FeatureEdit("s", 5, EditMode.SET, 1.5, relative=True), "edits[0].relative"),
            (FeatureEdit("s", 4, EditMode.SET, 3000.0, relative=True), "edits[0].value"),
            (FeatureEdit("s", 99, EditMode.SET, 1.0, relative=True), "edits[0].feature"),
            (FeatureEdit("s", 4, EditMode.SCALE, 2.0, relative=True), "edits[0].relative"),
        ]
        for edit, field in bad:
            with pytest.raises(InvalidRequestError) as err:
                _run(_collect(front, TextRequest(prompt="Hi", sampling=GREEDY, edits=(edit,))))
            assert err.value.field == field, (edit, err.value)
    finally:
        front.stop()
