"""Scenario 4: cancel storms. Streams cancelled after a few tokens, while queued and during
their prefill, with jitter, among streams read to the end: the rest equal their solo runs."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from steering_proto.v1 import steering_pb2 as pb
from tests.reliability.conftest import Scale
from tests.reliability.rig import ABLATE, ADD, SCALE, SET, Result, Rig, gen
from tests.server.harness import edit

# Streams read to the end cycle through these (prompt, edits, tokens): references stay few.
KEPT = [
    ("Tell me about the sea", [], 20),
    ("Hi", [edit("res", 5, SET, 30.0)], 33),
    ("The forest was tall and the moss was green", [edit("deep", 3, ADD, 20.0)], 26),
    ("A small bird sang", [edit("res", 7, SCALE, 8.0, active=True)], 41),
    ("Thank you so much!", [edit("res", 9, ABLATE), edit("deep", 1, SET, -6.0)], 17),
    ("Once upon a time", [], 38),
]
LATE_CANCELS = 10  # cancelled after a few tokens, with jitter
QUEUED_CANCELS = 5  # cancelled while the engine still holds them in its queue
PREFILL_CANCELS = 2  # cancelled while their prefill forward is running
LONG = 400  # tokens asked by the streams that are cancelled: they never end on their own


@dataclass
class Stream:
    rid: str
    message: pb.GenerateRequest
    role: str  # kept, late, queued, prefill
    cancel_after: int = 0  # tokens before a late cancel
    jitter_s: float = 0.0


def _plan(rng: random.Random, n: int, round_: int) -> list[Stream]:
    roles = (
        ["late"] * LATE_CANCELS
        + ["queued"] * QUEUED_CANCELS
        + ["prefill"] * PREFILL_CANCELS
        + ["kept"] * (n - LATE_CANCELS - QUEUED_CANCELS - PREFILL_CANCELS)
    )
    rng.shuffle(roles)
    streams = []
    for i, role in enumerate(roles):
        rid = f"storm-{round_}-{i}-{role}"
        if role == "kept":
            prompt, edits, tokens = KEPT[i % len(KEPT)]
        else:  # a prompt of its own, so a prefill can be recognised by its tokens
            prompt, edits, tokens = f"Storm {round_} stream {i} goes on", [], LONG
        message = gen(prompt, rid=rid, edits=edits, max_new_tokens=tokens, ignore_eos=True)
        streams.append(Stream(rid, message, role, rng.randint(1, 4), rng.uniform(0, 0.02)))
    return streams


class PrefillTrap:
    """Holds a prefill forward holding one of `prompts` until that stream's abort arrives."""

    def __init__(self, rig: Rig, prompts: dict[str, str]) -> None:
        tokenizer = rig.srv.app.frontend.tokenizer
        self.rig = rig
        self.ids = {rid: list(tokenizer(p).input_ids) for rid, p in prompts.items()}
        self.cancel: dict[str, threading.Event] = {rid: threading.Event() for rid in prompts}
        self.caught: set[str] = set()

    def hook(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids")
        if ids is None or ids.shape[1] < 2:
            return  # a decode step
        rows = [row.tolist() for row in ids]
        for rid, prompt in self.ids.items():
            if rid in self.caught or not any(row[-len(prompt) :] == prompt for row in rows):
                continue
            self.caught.add(rid)
            self.cancel[rid].set()  # the client cancels now, while this forward is held
            self.rig.wait_until(lambda rid=rid: self.rig.abort_pending(rid), timeout=10)


def _run_stream(rig: Rig, s: Stream, trap: PrefillTrap) -> Result:
    call = rig.stub.Generate(s.message)
    if s.role == "queued":
        rig.wait_until(lambda: rig.where(s.rid) is not None, timeout=30)
        call.cancel()
    elif s.role == "prefill":
        assert trap.cancel[s.rid].wait(60), "the prefill was never seen"
        call.cancel()
    on_chunk: Callable[[int, pb.GenerateResponse], None] | None = None
    if s.role == "late":

        def on_chunk(i: int, chunk: pb.GenerateResponse) -> None:
            if i + 1 == s.cancel_after:
                time.sleep(s.jitter_s)
                call.cancel()

    return rig.consume(call, on_chunk=on_chunk)


def _storm_round(rig: Rig, scale: Scale, round_: int) -> None:
    rng = random.Random(round_)
    streams = _plan(rng, scale.storm_streams, round_)
    references = {s.rid: rig.reference(s.message) for s in streams if s.role == "kept"}
    trap = PrefillTrap(rig, {s.rid: s.message.prompt for s in streams if s.role == "prefill"})
    handle = rig.engine.model.register_forward_pre_hook(trap.hook, with_kwargs=True)
    try:
        with ThreadPoolExecutor(len(streams)) as pool:
            futures = []
            for s in streams:
                futures.append(pool.submit(_run_stream, rig, s, trap))
                time.sleep(rng.uniform(0, 0.003))  # arrivals spread over a few steps
            results = {s.rid: f.result(120) for s, f in zip(streams, futures, strict=True)}
    finally:
        handle.remove()
    assert trap.caught == set(trap.ids), "a prefill cancel missed its prefill"
    for s in streams:
        r = results[s.rid]
        if s.role == "kept":
            assert r.outcome == "ok", (s.rid, r.details)
            assert r.ids == references[s.rid].ids and r.text == references[s.rid].text, s.rid
            assert r.finals == 1
        else:
            assert r.outcome == "cancelled", (s.rid, r.outcome, r.details)
            assert len(r.ids) < LONG
    rig.check_idle()
    for s in streams:  # the engine let each cancelled row go long before its budget
        if s.role != "kept":
            done = rig.finished_one(s.rid)
            assert done.finish_reason.value == "aborted" and done.completion_tokens < LONG


def test_cancel_storm_leaves_the_rest_exact(rig: Rig, scale: Scale) -> None:
    for round_ in range(scale.storm_rounds):
        _storm_round(rig, scale, round_)
