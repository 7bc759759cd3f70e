"""The real `steering-server` CLI as a child process on loopback, its log kept for inspection."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from steering_proto.v1 import steering_pb2_grpc as pb_grpc
from tests.reliability.rig import Client, MiB, rss_bytes

# Lines of the server's log that mean something went wrong inside it.
ERROR_LINE = re.compile(r" (ERROR|CRITICAL) |Traceback|Exception")


class ServerProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "steering_server", "--host", "127.0.0.1", "--port", "0",
             "--metrics-port", "0", "--http-port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.port = int(self.wait_for(r"gRPC listening on 127\.0\.0\.1:(\d+)").group(1))
        self.metrics_port = int(self.wait_for(r"metrics on http://127\.0\.0\.1:(\d+)").group(1))
        self.http_port = 0
        if "--no-http" not in args:
            http = self.wait_for(r"HTTP listening on http://127\.0\.0\.1:(\d+)")
            self.http_port = int(http.group(1))
        self.wait_for(r"serving ")
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.SteeringServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"no {pattern!r} in the server's log:\n{''.join(self.lines)}")

    def error_lines(self) -> list[str]:
        return [line for line in self.lines if ERROR_LINE.search(line)]

    def serving(self) -> int:
        request = health_pb2.HealthCheckRequest()
        return int(self.health.Check(request, timeout=5).status)

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        return {
            s.name + str(sorted(s.labels.values())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def outcomes(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for key, value in self.metrics().items():
            if m := re.fullmatch(r"steering_requests_total\['(\w+)'\]", key):
                counts[m.group(1)] = int(value)
        return +counts

    def rss(self) -> int:
        return rss_bytes(self.proc.pid)

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class ProcessRig(Client):
    """A server process with its clients' ledger, and the idle invariant as seen from outside:
    gauges at 0, counters equal to the ledger, nothing in its log that is an error, memory
    within a bound of what it was after its warm-up, and exit 0 on SIGTERM."""

    def __init__(self, server: ServerProcess, memory_bound: int = 64 * MiB) -> None:
        super().__init__(server.stub)
        self.server = server
        self.channel = server.channel
        self.memory_bound = memory_bound
        self.counters_at_start = server.outcomes()
        self.rss_baseline = 0
        self.final: tuple[Counter[str], Counter[str]] | None = None

    def before_scenario(self) -> None:
        if not self.rss_baseline:  # the server's own memory: one baseline for its whole life
            self.rss_baseline = self.server.rss()

    def counters(self) -> Counter[str]:
        now = self.server.outcomes()
        now.subtract(self.counters_at_start)
        return +now

    def wait_idle(self, timeout: float = 15.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = self.server.metrics()
            if m["steering_requests_running[]"] == m["steering_requests_waiting[]"] == 0:
                return
            time.sleep(0.01)
        raise AssertionError("the server did not become idle")

    def check_idle(self) -> None:
        self.wait_idle()
        end = time.monotonic() + 5
        while self.counters() != +self.ledger and time.monotonic() < end:
            time.sleep(0.02)
        counted, seen = dict(self.counters()), dict(+self.ledger)
        assert counted == seen, f"the server counted {counted}, clients saw {seen}"
        assert not self.server.error_lines(), "".join(self.server.error_lines())
        if self.rss_baseline:
            grown = self.server.rss() - self.rss_baseline
            assert grown < self.memory_bound, f"server memory grew by {grown / MiB:.1f} MiB"

    def close(self) -> None:
        try:
            self.check_idle()
        finally:
            self.final = (self.counters(), +self.ledger)
            self.server.terminate()
            code = self.server.proc.wait(30)
            self.server.close()
        assert code == 0
        assert not self.server.error_lines(), "".join(self.server.error_lines())


# The fuzzers' server: tight limits, so that "too long" is cheap to reach.
FUZZ_MAX_NEW_TOKENS = 256  # the canary's length; fuzzed requests ask for a few, or far too many
FUZZ_LIMITS = {
    "max_prompt_tokens": 64,
    "max_new_tokens": FUZZ_MAX_NEW_TOKENS,
    "default_max_new_tokens": 2,
    "max_edits_per_request": 8,
    "max_stop_strings": 4,
    "max_stop_string_chars": 16,
    "max_top_k": 8,
    "max_inspect_features": 4,
    "max_watched_features": 4,
    "max_contrast_texts": 4,
    "max_search_results": 5,
    "max_rules_per_request": 4,
}


def fuzz_server(model: Path, sae_specs: Sequence[str], folder: Path, **limits: Any) -> ProcessRig:
    """The real server process (its memory is then its own: a fuzzer's is large) on `model` with
    FUZZ_LIMITS (and `limits` over them) and a preset `calm`, written into `folder`."""
    presets = folder / "presets.toml"
    presets.write_text('[presets.calm]\nedits = ["res:1=set:3", "deep:2=ablate"]\n')
    server = ServerProcess(
        "--model", str(model),
        *(arg for spec in sae_specs for arg in ("--sae", spec)),
        "--presets", str(presets),
        env={f"STEERING_{k.upper()}": str(v) for k, v in (FUZZ_LIMITS | limits).items()},
    )  # fmt: skip
    return ProcessRig(server)
