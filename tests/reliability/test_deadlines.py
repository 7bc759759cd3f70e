"""Scenario 5: deadlines, short and long, and deadlines that pass while a request is queued."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

from tests.reliability.conftest import Scale
from tests.reliability.rig import SET, Rig, gen
from tests.server.harness import edit

LONG = 400


def test_short_deadlines_expire_and_long_ones_complete(rig: Rig, scale: Scale) -> None:
    rng = random.Random(5)
    calls = []
    for i in range(scale.deadline_calls):
        if i % 2:
            message = gen(f"Deadline {i}", rid=f"short-{i}", max_new_tokens=LONG, ignore_eos=True)
            calls.append((message, rng.uniform(0.1, 0.5)))
        else:
            edits = [edit("res", i % 128, SET, 12.0)] if i % 4 else []
            message = gen("The sea", rid=f"long-{i}", edits=edits, max_new_tokens=16)
            calls.append((message, 30.0))
    references = {m.request_id: rig.reference(m) for m, _ in calls if m.request_id[0] == "l"}
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(rig.call, m, timeout=t) for m, t in calls]
        results = [f.result(60) for f in futures]
    for (message, timeout), r in zip(calls, results, strict=True):
        if message.request_id in references:
            assert r.outcome == "ok", r.details
            assert r.ids == references[message.request_id].ids
        else:
            assert r.outcome == "deadline_exceeded", (r.outcome, r.details)
            assert r.seconds < timeout + 1.0
    rig.check_idle()
    for message, _ in calls:
        if message.request_id.startswith("short"):  # aborted, not run to its budget
            done = rig.finished_one(message.request_id)
            assert done.finish_reason.value == "aborted" and done.completion_tokens < LONG


def test_a_deadline_that_passes_in_the_queue_never_reaches_the_model(rig: Rig) -> None:
    """Every row is busy while the queued requests' deadlines pass: they leave the queue at the
    next step and are never prefilled."""
    queued = [gen(f"Queued {i}", rid=f"queued-{i}", max_new_tokens=4) for i in range(5)]
    rows = rig.engine.config.limits.max_active_rows
    with rig.slowed(0.01), ThreadPoolExecutor(16) as pool:
        holders = [
            rig.start(pool, gen(f"Holder {i}", rid=f"holder-{i}", max_new_tokens=LONG))
            for i in range(rows)
        ]
        rig.wait_until(lambda: rig.engine.snapshot().running == rows)
        waiting = [pool.submit(rig.call, m, timeout=0.3) for m in queued]
        expired = [f.result(30) for f in waiting]
        rig.wait_until(lambda: all(rig.where(m.request_id) is None for m in queued))
        assert rig.engine.snapshot().running == rows  # no row came free meanwhile
        for call, _ in holders:
            call.cancel()
        held = [f.result(30) for _, f in holders]
    assert [r.outcome for r in expired] == ["deadline_exceeded"] * len(queued)
    assert {r.outcome for r in held} == {"cancelled"}
    for m in queued:
        done = rig.finished_one(m.request_id)
        assert done.admitted_at is None and done.completion_tokens == 0


def test_a_request_aborted_while_queued_is_not_prefilled_when_a_row_is_free(rig: Rig) -> None:
    """The engine is held inside a decode step while a queued request's deadline passes; when
    the step goes on, rows are free: the request must still not be prefilled."""
    with rig.slowed(0.01), ThreadPoolExecutor(2) as pool:
        holder, held = rig.start(pool, gen("Holder", rid="free-row-holder", max_new_tokens=LONG))
        rig.wait_until(lambda: rig.where("free-row-holder") == "running")
        steps = rig.engine.snapshot().steps
        rig.wait_until(lambda: rig.engine.snapshot().steps > steps + 1)  # past its prefill
        with rig.gate() as gate:
            gate.wait_entered()  # inside the holder's decode; the other rows are free
            queued = pool.submit(rig.call, gen("Late", rid="free-row-late"), timeout=0.3)
            assert queued.result(10).outcome == "deadline_exceeded"
            rig.wait_until(lambda: rig.abort_pending("free-row-late"))
        holder.cancel()
        assert held.result(30).outcome == "cancelled"
    done = rig.finished_one("free-row-late")
    assert done.admitted_at is None, "prefilled after its abort had arrived"
