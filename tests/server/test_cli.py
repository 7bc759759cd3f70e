"""The real CLI as a subprocess: ports logged, health, SIGTERM drains a running stream, exit 0."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from steering_proto.v1 import steering_pb2 as pb
from steering_proto.v1 import steering_pb2_grpc as pb_grpc
from tests.server.harness import request


class Process:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "steering_server", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in self.lines:
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in:\n{''.join(self.lines)}")


@pytest.fixture
def cli_server(model_folders: dict[str, Path], sae_specs: list[str]):
    proc = Process(
        "--model", str(model_folders["gemma2"]), "--sae", sae_specs[0], "--host", "127.0.0.1",
        "--port", "0", "--metrics-port", "0", "--http-port", "0", "--grace-period", "20",
        env={"STEERING_MAX_ACTIVE_ROWS": "4", "STEERING_SAE": sae_specs[1]},
    )  # fmt: skip
    yield proc
    if proc.proc.poll() is None:
        proc.proc.kill()


def test_sigterm_drains_a_running_stream_and_exits_zero(cli_server: Process) -> None:
    port = int(cli_server.wait_for(r"gRPC listening on 127\.0\.0\.1:(\d+)").group(1))
    cli_server.wait_for(r"serving gemma2 with SAEs \['gs1'\]")  # the flag wins over STEERING_SAE
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest()).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    stub = pb_grpc.SteeringServiceStub(channel)
    assert stub.DescribeModel(pb.DescribeModelRequest()).limits.max_batch_size == 4  # from the env
    stream = stub.Generate(request("The sea", max_new_tokens=150, ignore_eos=True))
    first = next(stream)
    cli_server.proc.send_signal(signal.SIGTERM)
    cli_server.wait_for(r"draining")
    assert (
        health.Check(health_pb2.HealthCheckRequest()).status
        == health_pb2.HealthCheckResponse.NOT_SERVING
    )
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(request("Hi")))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    rest = list(stream)
    assert rest[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert len(first.token_ids) + sum(len(c.token_ids) for c in rest) == 150
    assert cli_server.proc.wait(30) == 0
    channel.close()


def test_grace_zero_ends_streams_with_unavailable(model_folders: dict[str, Path]) -> None:
    proc = Process(
        "--model", str(model_folders["gemma2"]), "--host", "127.0.0.1", "--port", "0",
        "--metrics-port", "0", "--http-port", "0", "--grace-period", "0",
    )  # fmt: skip
    try:
        port = int(proc.wait_for(r"gRPC listening on 127\.0\.0\.1:(\d+)").group(1))
        proc.wait_for(r"serving gemma2")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = pb_grpc.SteeringServiceStub(channel).Generate(
                request("The sea", max_new_tokens=400, ignore_eos=True)
            )
            next(stream)
            proc.proc.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.RpcError) as err:
                list(stream)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert proc.proc.wait(30) == 0
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()


def test_bad_settings_exit_2_with_a_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "steering_server", "--port", "99999"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "port" in result.stderr


def test_the_ready_file_names_the_ports_while_serving(
    model_folders: dict[str, Path], tmp_path: Path
) -> None:
    ready = tmp_path / "ready.json"
    proc = Process(
        "--model", str(model_folders["gemma2"]), "--host", "127.0.0.1", "--port", "0",
        "--metrics-port", "0", "--http-port", "0", "--ready-file", str(ready),
    )  # fmt: skip
    try:
        end = time.monotonic() + 60
        while not ready.is_file() and time.monotonic() < end and proc.proc.poll() is None:
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["pid"] == proc.proc.pid and info["target"] == f"127.0.0.1:{info['port']}"
        with grpc.insecure_channel(info["target"]) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        metrics = f"http://127.0.0.1:{info['metrics_port']}/metrics"
        assert b"steering_requests_total" in urllib.request.urlopen(metrics, timeout=5).read()
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(30) == 0
        assert not ready.exists()  # removed on exit
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
