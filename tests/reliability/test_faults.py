"""Scenario 10: injected faults. An exception in the steering hook or in the forward, and a row
whose logits are not finite: the requests concerned (the rows of that forward) fail INTERNAL
with a sanitised message; queued and later requests are served exactly; the server serves on."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

import steering.steer.hooks
from tests.reliability.rig import SET, Result, Rig, gen
from tests.server.harness import edit

SECRET = "SECRET-d41d8cd9"  # in every injected exception: it must never reach a client


def _sanitised(result: Result, message: str) -> None:
    assert result.outcome == "internal", (result.outcome, result.details)
    assert result.details == message
    assert SECRET not in result.details and "Traceback" not in result.details


def _decoding(rig: Rig, *rids: str) -> None:
    """Wait until every request is in the batch and past its prefill."""
    rig.wait_until(lambda: all(rig.where(r) == "running" for r in rids))
    steps = rig.engine.snapshot().steps
    rig.wait_until(lambda: rig.engine.snapshot().steps > steps + 1)


class Once:
    """Armed, it fires at the next matching call only."""

    def __init__(self) -> None:
        self.armed = threading.Event()
        self.fired = threading.Event()

    def take(self) -> bool:
        if self.armed.is_set() and not self.fired.is_set():
            self.fired.set()
            return True
        return False


def test_a_failing_steering_hook_fails_its_forward_only(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault, steer = Once(), steering.steer.hooks.steer

    def failing_steer(*args: Any) -> Any:
        if fault.take():
            raise RuntimeError(f"injected hook fault {SECRET}")
        return steer(*args)

    monkeypatch.setattr(steering.steer.hooks, "steer", failing_steer)
    steered = gen("Steered", rid="hook-v", edits=[edit("res", 5, SET, 9.0)], max_new_tokens=400)
    plain = gen("Plain", rid="hook-u", max_new_tokens=400)
    queued = gen("Queued meanwhile", rid="hook-q", max_new_tokens=30, ignore_eos=True)
    reference = rig.reference(queued)
    with rig.expect_errors("decode step failed"), rig.slowed(0.005):
        with ThreadPoolExecutor(3) as pool:
            in_batch = [pool.submit(rig.call, m) for m in (steered, plain)]
            _decoding(rig, "hook-v", "hook-u")
            with rig.gate() as gate:
                gate.wait_entered()
                waiting = pool.submit(rig.call, queued)
                rig.wait_until(lambda: rig.where("hook-q") == "waiting")
                fault.armed.set()
            failed = [f.result(30) for f in in_batch]
            served = waiting.result(30)
    assert fault.fired.is_set()
    for result in failed:
        _sanitised(result, "internal error in the model's forward pass")
    assert served.outcome == "ok" and served.ids == reference.ids


def test_a_failing_prefill_fails_that_request_only(rig: Rig) -> None:
    running = gen("Running along", rid="prefill-r", max_new_tokens=120, ignore_eos=True)
    reference = rig.reference(running)
    victim = "A prompt that breaks the forward"
    ids = list(rig.srv.app.frontend.tokenizer(victim).input_ids)

    def fail_on_victim(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        rows = kwargs["input_ids"].tolist()
        if kwargs["input_ids"].shape[1] > 1 and any(row[-len(ids) :] == ids for row in rows):
            raise RuntimeError(f"injected forward fault {SECRET}")

    handle = rig.engine.model.register_forward_pre_hook(fail_on_victim, with_kwargs=True)
    try:
        with rig.expect_errors("prefill failed"), rig.slowed(0.002):
            with ThreadPoolExecutor(2) as pool:
                survivor = pool.submit(rig.call, running)
                _decoding(rig, "prefill-r")
                failed = rig.call(gen(victim, rid="prefill-v", max_new_tokens=10))
                survived = survivor.result(60)
    finally:
        handle.remove()
    _sanitised(failed, "internal error while reading the prompt")
    assert survived.outcome == "ok" and survived.ids == reference.ids


def test_a_non_finite_row_fails_alone(rig: Rig) -> None:
    others = [
        gen("Neighbour one", rid="nan-o1", max_new_tokens=60, ignore_eos=True),
        gen("Neighbour two", rid="nan-o2", edits=[edit("res", 3, SET, 20.0)], max_new_tokens=60),
    ]
    references = [rig.reference(m) for m in others]
    poison, engine = Once(), rig.engine
    decoding = threading.local()

    def note(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        batch = engine._batch
        decoding.now = batch is not None and kwargs["input_ids"].shape == (len(batch), 1)

    def nan_row(module: Any, args: Any, logits: torch.Tensor) -> torch.Tensor | None:
        if not getattr(decoding, "now", False):
            return None
        keys = engine._batch.keys
        rows = [i for i, k in enumerate(keys) if engine._running[k].request.request_id == "nan-v"]
        if not rows or not poison.take():
            return None
        out = logits.clone()
        out[rows[0]] = float("nan")
        return out

    handles = [
        engine.model.register_forward_pre_hook(note, with_kwargs=True),
        engine.model.get_output_embeddings().register_forward_hook(nan_row),
    ]
    try:
        with rig.slowed(0.002), ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(rig.call, m) for m in others]
            victim = pool.submit(rig.call, gen("The victim", rid="nan-v", max_new_tokens=400))
            _decoding(rig, "nan-o1", "nan-o2", "nan-v")
            poison.armed.set()
            failed = victim.result(30)
            served = [f.result(60) for f in futures]
    finally:
        for handle in handles:
            handle.remove()
    assert poison.fired.is_set()
    _sanitised(failed, "non-finite values in the model's output")
    for result, reference in zip(served, references, strict=True):
        assert result.outcome == "ok" and result.ids == reference.ids


def test_the_server_serves_on_after_faults(rig: Rig) -> None:
    message = gen("After the storm", rid="after-faults", max_new_tokens=20, ignore_eos=True)
    first, second = rig.call(message), rig.call(message)
    assert first.outcome == second.outcome == "ok" and first.ids == second.ids
