"""Host-side checks of a running steering-server container, for `deploy/container-test.sh`.

Talks to the container only through its published loopback ports (gRPC and metrics), the way a
client would; knows nothing about podman except the one command it is told to run to stop it.

    container_probe.py health  TARGET TIMEOUT_S
    container_probe.py stream  TARGET SAE FEATURE VALUE
    container_probe.py metrics URL
    container_probe.py drain   TARGET -- STOP_COMMAND...
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass

# A host-side test tool, not the core library: grpc is what it exercises.
import grpc  # noqa: TID251
from grpc_health.v1 import health_pb2, health_pb2_grpc

from steering_client import Edit, SteeringClient, SteeringClientError

PROMPT = "Once upon a time"
DRAIN_TOKENS = 150  # long enough to span the SIGTERM (about 15 s of the demo model on 2 CPU cores)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def health(target: str, timeout_s: float) -> None:
    """Wait until grpc.health.v1 answers SERVING (the model is loaded and warmed up)."""
    deadline = time.monotonic() + timeout_s
    status = "no answer"
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    say(f"health: SERVING after {timeout_s - (deadline - time.monotonic()):.0f} s")
                    return
            except grpc.RpcError as error:
                status = error.code().name
            time.sleep(1)
    sys.exit(f"health: not SERVING within {timeout_s:.0f} s (last: {status})")


def stream(target: str, sae: str, feature: int, value: float) -> None:
    """A greedy generation streams in several chunks, and steering changes its text."""
    with SteeringClient(target, timeout=120) as client:
        description = client.describe()
        names = [s.name for s in description.saes]
        if sae not in names:
            sys.exit(f"stream: SAE {sae!r} not served (have {names})")
        plain = client.generate_text(PROMPT, max_new_tokens=20)
        chunks = list(
            client.generate(PROMPT, edits=[Edit.set(sae, feature, value)], max_new_tokens=20)
        )
    steered = "".join(c.text for c in chunks)
    last = chunks[-1]
    say(f"stream: unsteered {plain!r}")
    say(f"stream: steered   {steered!r} ({len(chunks)} chunks, finish {last.finish_reason})")
    if len(chunks) < 2 or last.usage is None or last.usage.completion_tokens == 0:
        sys.exit("stream: expected tokens in several chunks and a final usage")
    if steered == plain:
        sys.exit("stream: the edit did not change the greedy output")


def metrics(url: str) -> None:
    """The exposition counts the calls above and carries the autoscaling gauge."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    wanted = {
        'steering_requests_total{outcome="ok"}': 2.0,  # 2 calls above (+ warm-up if counted)
        "steering_generated_tokens_total": 1.0,
        "steering_requests_waiting": 0.0,
    }
    for name, least in wanted.items():
        if values.get(name, -1.0) < least:
            sys.exit(f"metrics: {name} = {values.get(name)}, expected >= {least}")
    edits = sum(v for k, v in values.items() if k.startswith("steering_feature_edits_total{"))
    if edits < 1:
        sys.exit("metrics: no feature edits counted")
    shown = {k: values[k] for k in wanted}
    say(f"metrics: {len(values)} samples; {shown}; feature edits {edits:.0f}")


@dataclass
class _Stream:
    tokens: int = 0
    after_signal: int = 0  # tokens that arrived after SIGTERM was sent
    finish: str | None = None
    error: str | None = None


def drain(target: str, stop_command: list[str]) -> None:
    """SIGTERM during a long stream: the stream still finishes, and new calls are refused."""
    first_chunk, signalled = threading.Event(), threading.Event()
    outcome = _Stream()

    def long_generation() -> None:
        try:
            with SteeringClient(target, timeout=120) as client:
                edits = [Edit.set("demo", 632, 490.0)]
                for chunk in client.generate(
                    PROMPT, edits=edits, max_new_tokens=DRAIN_TOKENS, ignore_eos=True
                ):
                    first_chunk.set()
                    outcome.tokens += len(chunk.token_ids)
                    if signalled.is_set():
                        outcome.after_signal += len(chunk.token_ids)
                    outcome.finish = chunk.finish_reason
        except SteeringClientError as error:
            outcome.error = error.code_name
        finally:
            first_chunk.set()

    reader = threading.Thread(target=long_generation)
    reader.start()
    first_chunk.wait(60)
    subprocess.run(stop_command, check=True, stdout=subprocess.DEVNULL)
    signalled.set()
    time.sleep(0.2)  # let the signal reach the server
    with SteeringClient(target, timeout=10) as client:
        try:
            client.generate_text(PROMPT, max_new_tokens=4)
            refused = "accepted"
        except SteeringClientError as error:
            refused = error.code_name
    reader.join(120)
    say(f"drain: stream in flight at SIGTERM {outcome}; a new call during the drain: {refused}")
    if outcome.finish != "length" or outcome.tokens != DRAIN_TOKENS:
        sys.exit("drain: the stream in flight did not finish")
    if refused != "UNAVAILABLE":
        sys.exit("drain: a call during the drain was not refused with UNAVAILABLE")


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "health":
        health(args[0], float(args[1]))
    elif command == "stream":
        stream(args[0], args[1], int(args[2]), float(args[3]))
    elif command == "metrics":
        metrics(args[0])
    elif command == "drain":
        drain(args[0], args[args.index("--") + 1 :])
    else:
        sys.exit(f"unknown check {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
