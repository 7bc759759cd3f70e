"""An in-process server on loopback port 0, run in its own event-loop thread, for sync tests."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from steering_proto.v1 import steering_pb2 as pb
from steering_proto.v1 import steering_pb2_grpc as pb_grpc
from steering_server.app import SteeringApp
from steering_server.settings import Settings


class ServerThread:
    def __init__(self, **settings: Any) -> None:
        defaults: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "metrics_port": 0,
            "http_port": 0,  # never the default 8000: test servers run side by side
            "device": "cpu",
            "dtype": "float32",  # exactness tests compare with float32 references
        }
        self.settings = Settings(**(defaults | settings))
        self.app = SteeringApp(self.settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(self.app.start(), timeout=120)
        self.target = f"127.0.0.1:{self.app.port}"
        self.channel = grpc.insecure_channel(self.target)
        self.stub = pb_grpc.SteeringServiceStub(self.channel)

    def run(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def engine(self) -> Any:
        assert self.app.frontend is not None
        return self.app.frontend.engine

    def generate(self, request: pb.GenerateRequest, **kwargs: Any) -> list[pb.GenerateResponse]:
        return list(self.stub.Generate(request, **kwargs))

    def metrics(self) -> dict[str, float]:
        """Every sample of the exposition, keyed `name{label="value",...}`."""
        url = f"http://127.0.0.1:{self.app.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return samples

    def metrics_reaching(self, name: str, value: float, timeout: float = 10) -> dict[str, float]:
        """The exposition once sample `name` has reached `value`: the engine's step stats reach
        the metrics after the step, which may be after the client saw the stream end."""
        import time

        end = time.monotonic() + timeout
        while (samples := self.metrics()).get(name, 0.0) < value and time.monotonic() < end:
            time.sleep(0.01)
        return samples

    def wait_idle(self, timeout: float = 10) -> None:
        import time

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.engine.idle:
                return
            time.sleep(0.01)
        raise AssertionError("the engine did not become idle")

    def close(self) -> None:
        self.channel.close()
        self.run(self.app.drain(grace=0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def request(
    prompt: str | None = None,
    *,
    chat: list[tuple[str, str]] | None = None,
    edits: list[pb.FeatureEdit] | None = None,
    **sampling: Any,
) -> pb.GenerateRequest:
    sampling.setdefault("max_new_tokens", 8)
    msg = pb.GenerateRequest(sampling=pb.SamplingParams(**sampling), edits=edits or [])
    if prompt is not None:
        msg.prompt = prompt
    if chat is not None:
        msg.chat.CopyFrom(pb.Chat(messages=[pb.ChatMessage(role=r, content=c) for r, c in chat]))
    return msg


def edit(
    sae: str, feature: int, mode: int, value: float = 0.0, active: bool = False
) -> pb.FeatureEdit:
    return pb.FeatureEdit(sae=sae, feature=feature, mode=mode, value=value, only_when_active=active)
