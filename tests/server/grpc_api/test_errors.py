"""Status codes: every bad input is INVALID_ARGUMENT naming the field; cancel, deadline, queue."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from steering_proto.v1 import steering_pb2 as pb
from tests.server.harness import ServerThread, edit, request

SET = pb.EDIT_MODE_SET
INVALID = [
    ("unknown SAE", request("Hi", edits=[edit("nope", 1, SET, 1.0)]), "edits[0].sae"),
    ("feature out of range", request("Hi", edits=[edit("gs1", 128, SET, 1.0)]), "edits[0].feature"),
    ("NaN value", request("Hi", edits=[edit("gs1", 1, SET, float("nan"))]), "edits[0].value"),
    ("inf value", request("Hi", edits=[edit("gs1", 1, SET, float("-inf"))]), "edits[0].value"),
    ("over the cap", request("Hi", edits=[edit("gs1", 1, SET, 1e9)]), "edits[0].value"),
    (
        "duplicate",
        request("Hi", edits=[edit("gs1", 1, SET, 1.0), edit("gs1", 1, SET, 2.0)]),
        "edits[1].feature",
    ),
    (
        "no mode",
        request("Hi", edits=[edit("gs1", 1, pb.EDIT_MODE_UNSPECIFIED, 1.0)]),
        "edits[0].mode",
    ),
    ("NaN temperature", request("Hi", temperature=float("nan")), "sampling.temperature"),
    ("negative temperature", request("Hi", temperature=-0.5), "sampling.temperature"),
    ("NaN top_p", request("Hi", top_p=float("nan")), "sampling.top_p"),
    ("top_p above 1", request("Hi", top_p=1.5), "sampling.top_p"),
    (
        "max_new_tokens over the limit",
        request("Hi", max_new_tokens=10**6),
        "sampling.max_new_tokens",
    ),
    ("empty stop string", request("Hi", stop=[""]), "sampling.stop[0]"),
    ("too many stop strings", request("Hi", stop=["a"] * 9), "sampling.stop"),
    ("empty prompt", request(""), "prompt"),
    ("blank prompt", request("   "), "prompt"),
    ("no input", pb.GenerateRequest(), "input"),
    ("prompt too long", request("sea " * 2000), "prompt"),
    ("empty chat", request(chat=[]), "chat.messages"),
    ("bad chat role", request(chat=[("wizard", "hi")]), "chat.messages[0].role"),
]


@pytest.mark.parametrize(("name", "message", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_bad_input_is_invalid_argument_naming_the_field(
    gemma2_server: ServerThread, name: str, message: pb.GenerateRequest, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        gemma2_server.generate(message)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert err.value.details().startswith(field), err.value.details()
    gemma2_server.wait_idle()


def _stream(srv: ServerThread, n: int = 400, **kw: object) -> Iterator[pb.GenerateResponse]:
    return srv.stub.Generate(request("The sea", max_new_tokens=n, ignore_eos=True), **kw)  # type: ignore[arg-type]


def test_cancel_mid_stream_frees_the_row_and_spares_the_others(gemma2_server: ServerThread) -> None:
    srv = gemma2_server
    alone = srv.generate(request("A small bird sang", max_new_tokens=30, ignore_eos=True))
    doomed = _stream(srv)
    next(doomed)
    next(doomed)
    other: list[pb.GenerateResponse] = []
    reader = threading.Thread(
        target=lambda: other.extend(
            srv.generate(request("A small bird sang", max_new_tokens=30, ignore_eos=True))
        )
    )
    reader.start()
    doomed.cancel()  # type: ignore[attr-defined]
    reader.join(30)
    srv.wait_idle()
    assert [t for c in other for t in c.token_ids] == [t for c in alone for t in c.token_ids]
    assert srv.metrics()["steering_requests_running"] == 0
    assert srv.metrics()["steering_requests_waiting"] == 0


def test_deadline_is_deadline_exceeded_and_frees_the_row(gemma2_server: ServerThread) -> None:
    with pytest.raises(grpc.RpcError) as err:
        list(_stream(gemma2_server, n=1000, timeout=0.3))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    gemma2_server.wait_idle()


def _first_or_cancelled(stream: Iterator[pb.GenerateResponse]) -> None:
    try:
        next(stream, None)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.CANCELLED


@pytest.fixture(scope="module")
def one_row_server(model_folders: dict[str, Path], sae_specs: list[str]) -> Iterator[ServerThread]:
    srv = ServerThread(
        model=model_folders["gemma2"], sae=sae_specs, max_active_rows=1, max_queued_requests=1
    )
    yield srv
    srv.close()


def test_queue_full_is_resource_exhausted_at_once(one_row_server: ServerThread) -> None:
    srv = one_row_server
    # Slow every forward so the admitted calls are surely still in flight when the third comes.
    slow = srv.engine.model.register_forward_hook(lambda *_: time.sleep(0.02))
    try:
        _fill_and_overflow(srv)
    finally:
        slow.remove()
    srv.wait_idle()
    assert srv.metrics()['steering_requests_total{outcome="resource_exhausted"}'] == 1


def _fill_and_overflow(srv: ServerThread) -> None:
    running = _stream(srv)
    next(running)  # admitted: the one row is taken
    queued = _stream(srv)
    started = threading.Thread(target=_first_or_cancelled, args=(queued,))
    started.start()
    deadline = time.monotonic() + 10
    while srv.engine.snapshot().waiting < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.engine.snapshot().running == 1
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        srv.generate(request("Hi"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert time.monotonic() - start < 2.0
    running.cancel()  # type: ignore[attr-defined]
    queued.cancel()  # type: ignore[attr-defined]
    started.join(10)


@pytest.fixture(scope="module")
def auth_server(model_folders: dict[str, Path]) -> Iterator[ServerThread]:
    srv = ServerThread(model=model_folders["gemma2"], auth_tokens=["s3cret-token"])
    yield srv
    srv.close()


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        [("authorization", "Bearer wrong")],
        [("authorization", "Bearer S3CRET-TOKEN")],
        [("authorization", "s3cret-token")],
    ],
)
def test_auth_rejects_missing_or_wrong_tokens(
    auth_server: ServerThread, metadata: list[tuple[str, str]] | None
) -> None:
    for call in (
        lambda: auth_server.generate(request("Hi"), metadata=metadata),
        lambda: auth_server.stub.DescribeModel(pb.DescribeModelRequest(), metadata=metadata),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_auth_accepts_the_right_token_and_leaves_health_open(auth_server: ServerThread) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    good = [("authorization", "Bearer s3cret-token")]
    chunks = auth_server.generate(request("Hi", max_new_tokens=3, ignore_eos=True), metadata=good)
    assert chunks[-1].usage.completion_tokens == 3
    health = health_pb2_grpc.HealthStub(auth_server.channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest()).status
        == health_pb2.HealthCheckResponse.SERVING
    )
