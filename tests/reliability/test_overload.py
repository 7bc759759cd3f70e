"""Scenario 3: overload. A call is admitted iff waiting + running < rows + queue; the rest are
RESOURCE_EXHAUSTED at once, and health and DescribeModel keep answering."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from steering_proto.v1 import steering_pb2 as pb
from tests.reliability.conftest import Scale, start_rig
from tests.reliability.rig import SET, LogCapture, Rig, gen
from tests.server.harness import edit

ROWS, QUEUE, EXTRA = 4, 4, 6
QUICK_S = 2.0  # "at once": far below the time the admitted calls take


@pytest.fixture(scope="module")
def overload_rig(
    logs: LogCapture, model_folders: dict[str, Path], sae_specs_reliability: list[str]
) -> Iterator[Rig]:
    rig = start_rig(
        logs,
        model_folders["gemma2"],
        sae_specs_reliability,
        max_active_rows=ROWS,
        max_queued_requests=QUEUE,
    )
    yield rig
    rig.close()


def _health_and_describe_answer(rig: Rig) -> None:
    start = time.monotonic()
    health = health_pb2_grpc.HealthStub(rig.srv.channel)
    status = health.Check(health_pb2.HealthCheckRequest(), timeout=QUICK_S).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    described = rig.stub.DescribeModel(pb.DescribeModelRequest(), timeout=QUICK_S)
    assert described.limits.max_batch_size == ROWS
    assert time.monotonic() - start < QUICK_S


def test_exactly_the_extra_calls_are_refused_at_once(overload_rig: Rig) -> None:
    rig = overload_rig
    admitted = [
        gen(
            f"The sea number {i}",
            rid=f"admitted-{i}",
            edits=[edit("res", i, SET, 20.0)] if i % 2 else [],
            max_new_tokens=12 + i,
            ignore_eos=True,
        )
        for i in range(ROWS + QUEUE)
    ]
    with rig.gate() as gate, ThreadPoolExecutor(ROWS + QUEUE + EXTRA) as pool:
        running = [pool.submit(rig.call, c) for c in admitted]
        rig.wait_until(lambda: rig.held() == ROWS + QUEUE)
        gate.wait_entered()  # the engine is frozen inside a forward: nothing leaves
        extra = [
            pool.submit(rig.call, gen("One too many", rid=f"extra-{i}", max_new_tokens=4))
            for i in range(EXTRA)
        ]
        refused = [f.result(30) for f in extra]
        _health_and_describe_answer(rig)
        assert rig.held() == ROWS + QUEUE
        gate.open()
        results = [f.result(60) for f in running]
    for r in refused:
        assert r.outcome == "resource_exhausted", (r.outcome, r.details)
        assert r.seconds < QUICK_S and not r.chunks
    for call, r in zip(admitted, results, strict=True):
        assert r.outcome == "ok", r.details
        assert len(r.ids) == call.sampling.max_new_tokens and r.finals == 1
    assert not any(f.request_id.startswith("extra-") for f in rig.finished)  # never queued


def test_a_flood_is_served_or_refused_quickly_never_lost(overload_rig: Rig, scale: Scale) -> None:
    """Three times the capacity, all at once, with slowed steps: each call completes or is
    refused quickly; capacity is used; the server answers probes throughout."""
    rig = overload_rig
    flood = 3 * (ROWS + QUEUE)
    slow = rig.engine.model.register_forward_hook(lambda *_: time.sleep(0.005))
    barrier = threading.Barrier(flood)

    def one(i: int) -> object:
        barrier.wait(10)
        return rig.call(gen(f"Flood {i}", rid=f"flood-{i}", max_new_tokens=10, ignore_eos=True))

    try:
        with ThreadPoolExecutor(flood) as pool:
            futures = [pool.submit(one, i) for i in range(flood)]
            _health_and_describe_answer(rig)
            results = [f.result(120) for f in futures]
    finally:
        slow.remove()
    outcomes = [r.outcome for r in results]  # type: ignore[attr-defined]
    assert set(outcomes) <= {"ok", "resource_exhausted"}, outcomes
    assert outcomes.count("ok") >= ROWS + QUEUE
    for r in results:
        if r.outcome == "ok":  # type: ignore[attr-defined]
            assert len(r.ids) == 10 and r.finals == 1  # type: ignore[attr-defined]
        else:
            assert r.seconds < QUICK_S  # type: ignore[attr-defined]
