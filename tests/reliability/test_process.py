"""Scenarios 4 and 11 on the real CLI process: a cancel storm (counters equal what clients saw,
gauges back to 0, nothing logged as an error, memory bounded), then SIGTERM with ten streams in
flight: NOT_SERVING at once, new calls UNAVAILABLE, the ten complete, exit 0; and with a grace
period of 0 they end UNAVAILABLE and the process still exits 0."""

from __future__ import annotations

import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from steering_proto.v1 import steering_pb2 as pb
from tests.reliability.conftest import Scale
from tests.reliability.process import ServerProcess
from tests.reliability.rig import SET, MiB, Result, gen, read
from tests.server.harness import edit

ROWS = "4"
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _start(model_folders: dict[str, Path], saes: list[str], grace: str) -> ServerProcess:
    return ServerProcess(
        "--model", str(model_folders["gemma2"]), "--sae", saes[0], "--grace-period", grace,
        env={"STEERING_MAX_ACTIVE_ROWS": ROWS, "STEERING_MAX_QUEUED_REQUESTS": "64"},
    )  # fmt: skip


def _storm(server: ServerProcess, n: int, ledger: Counter[str]) -> None:
    rng = random.Random(11)
    kept = [
        gen(f"Process storm {i}", edits=[edit("res", i, SET, 15.0)] if i % 2 else [],
            max_new_tokens=10 + i, ignore_eos=True)
        for i in range(4)
    ]  # fmt: skip
    references = [read(server.stub.Generate(m)) for m in kept]
    ledger.update(r.outcome for r in references)

    def one(i: int) -> tuple[int, Result]:
        if i % 4 == 0:  # cancelled after a few tokens, with jitter
            call = server.stub.Generate(gen(f"Doomed {i}", max_new_tokens=400, ignore_eos=True))

            def cancel(j: int, _: object) -> None:
                if j == 1:
                    time.sleep(rng.uniform(0, 0.02))
                    call.cancel()

            return i, read(call, on_chunk=cancel)
        return i, read(server.stub.Generate(kept[i % len(kept)]))

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    for i, r in results:
        ledger[r.outcome] += 1
        if i % 4 == 0:
            assert r.outcome == "cancelled", r.details
        else:
            assert r.outcome == "ok" and r.ids == references[i % len(kept)].ids, r.details


def _idle(server: ServerProcess, ledger: Counter[str]) -> None:
    end = time.monotonic() + 10
    while time.monotonic() < end:
        m = server.metrics()
        idle = m["steering_requests_running[]"] == m["steering_requests_waiting[]"] == 0
        if idle and server.outcomes() == +ledger:
            break
        time.sleep(0.05)
    assert m["steering_requests_running[]"] == m["steering_requests_waiting[]"] == 0
    assert server.outcomes() == +ledger
    assert not server.error_lines(), "".join(server.error_lines())


def test_storm_then_sigterm_drains_ten_streams(
    model_folders: dict[str, Path], sae_specs_reliability: list[str], scale: Scale
) -> None:
    server = _start(model_folders, sae_specs_reliability, grace="20")
    try:
        ledger: Counter[str] = Counter()
        warm = read(server.stub.Generate(gen("Warm up", max_new_tokens=8)))
        ledger[warm.outcome] += 1
        baseline = server.rss()
        _storm(server, 12 if scale.name == "small" else 40, ledger)
        _idle(server, ledger)
        assert server.rss() - baseline < 64 * MiB

        streams = [gen(f"Drain {i}", max_new_tokens=30 + 5 * i, ignore_eos=True) for i in range(10)]
        watch = server.health.Watch(health_pb2.HealthCheckRequest(), timeout=60)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        with ThreadPoolExecutor(10) as pool:
            futures = [pool.submit(read, server.stub.Generate(m)) for m in streams]
            end = time.monotonic() + 10
            while time.monotonic() < end:  # all ten are in the engine, running or queued
                m = server.metrics()
                if m["steering_requests_running[]"] + m["steering_requests_waiting[]"] == 10:
                    break
                time.sleep(0.01)
            server.terminate()
            signalled = time.monotonic()
            while server.serving() != NOT_SERVING:
                assert time.monotonic() - signalled < 1.0, "health still SERVING"
                time.sleep(0.01)
            assert next(watch).status == NOT_SERVING  # watchers are told too
            refused = read(server.stub.Generate(gen("Too late", max_new_tokens=4)))
            results = [f.result(60) for f in futures]
        assert refused.outcome == "unavailable", refused.details
        for message, r in zip(streams, results, strict=True):
            assert r.outcome == "ok", r.details
            assert len(r.ids) == message.sampling.max_new_tokens and r.finals == 1
        assert server.proc.wait(30) == 0
        assert time.monotonic() - signalled < 20
        assert not server.error_lines(), "".join(server.error_lines())
    finally:
        server.close()


def test_grace_zero_ends_streams_unavailable_and_exits_cleanly(
    model_folders: dict[str, Path], sae_specs_reliability: list[str]
) -> None:
    server = _start(model_folders, sae_specs_reliability, grace="0")
    try:
        streams = [gen(f"Cut {i}", max_new_tokens=400, ignore_eos=True) for i in range(10)]
        with ThreadPoolExecutor(10) as pool:
            calls = [server.stub.Generate(m) for m in streams]
            futures = [pool.submit(read, c) for c in calls]
            end = time.monotonic() + 10
            while time.monotonic() < end:
                m = server.metrics()
                if m["steering_requests_running[]"] + m["steering_requests_waiting[]"] == 10:
                    break
                time.sleep(0.01)
            server.terminate()
            results = [f.result(60) for f in futures]
        assert [r.outcome for r in results] == ["unavailable"] * 10, [r.details for r in results]
        assert server.proc.wait(30) == 0
        assert not server.error_lines(), "".join(server.error_lines())
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=1)
                raise AssertionError("the port still answers after exit")
            except grpc.FutureTimeoutError:
                pass
    finally:
        server.close()


def test_draining_refuses_every_new_call_and_a_second_signal_ends_it_now(
    model_folders: dict[str, Path], sae_specs_reliability: list[str]
) -> None:
    """SIGTERM with a long grace: SearchFeatures and DescribeModel are refused like Generate;
    a second SIGTERM cuts the grace short, ending the streams still running."""
    server = _start(model_folders, sae_specs_reliability, grace="600")
    try:
        streams = [gen(f"Long {i}", max_new_tokens=400, ignore_eos=True) for i in range(12)]
        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(read, server.stub.Generate(m)) for m in streams]
            end = time.monotonic() + 10
            while time.monotonic() < end:
                m = server.metrics()
                if m["steering_requests_running[]"] + m["steering_requests_waiting[]"] == 12:
                    break
                time.sleep(0.01)
            server.terminate()
            server.wait_for(r"draining")
            for call in (
                lambda: server.stub.SearchFeatures(pb.SearchFeaturesRequest(query="sea")),
                lambda: server.stub.DescribeModel(pb.DescribeModelRequest()),
            ):
                try:
                    call()
                    code = grpc.StatusCode.OK
                except grpc.RpcError as err:
                    code = err.code()
                assert code == grpc.StatusCode.UNAVAILABLE
            server.terminate()  # the second signal
            assert server.proc.wait(60) == 0  # long before the grace period ends
            results = [f.result(60) for f in futures]
        assert "unavailable" in {r.outcome for r in results}, [r.details for r in results]
        assert {r.outcome for r in results} <= {"ok", "unavailable"}
        assert not server.error_lines(), "".join(server.error_lines())
    finally:
        server.close()
