"""Assembling and running the service: load, warm up, serve, drain.

`SteeringApp.start()` loads the model and SAEs (or the demo), starts the engine thread, the gRPC
server (with health and reflection) and the metrics endpoint, runs one warm-up generation, then
marks health SERVING. `drain()` is the SIGTERM path: NOT_SERVING, refuse new calls, let calls in
flight finish within the grace period, then stop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from steering import LoadedModel, SaeAttachment, load_model, load_sae
from steering.catalog import Catalog
from steering.demo.gemma import MODEL_NAME as DEMO_MODEL_NAME
from steering.demo.gemma import prepare_demo
from steering.engine import Engine, EngineConfig
from steering.frontend import FrontEnd
from steering.labels import labels_beside, load_labels
from steering.presets import Preset, load_presets
from steering.sae_formats import file_sha256, sae_file
from steering.vectors import load_vectors
from steering_proto.v1 import steering_pb2 as pb
from steering_proto.v1 import steering_pb2_grpc as pb_grpc
from steering_server import hardware
from steering_server.errors import AuthInterceptor, ErrorInterceptor
from steering_server.metrics import Metrics
from steering_server.preflight import StartupError
from steering_server.servicer import SteeringServicer
from steering_server.settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SteeringService"].full_name
GENERATE_METHOD = f"/{SERVICE_NAME}/Generate"


@dataclass(frozen=True)
class Loaded:
    model: LoadedModel
    attachments: tuple[SaeAttachment, ...]
    name: str
    catalog: Catalog
    presets: dict[str, Preset]


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":  # bf16 where it is fast: CUDA, or a CPU with native bf16
        fast = device.type == "cuda" or hardware.cpu_has_native_bf16()
        return torch.bfloat16 if fast else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[setting]


def load(settings: Settings) -> Loaded:
    """The model and SAEs named by the settings (or the built-in demo), on the chosen device."""
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    if settings.demo:
        assets = prepare_demo()
        specs = [(assets.sae_name, assets.sae_dir, assets.layer)]
        model_dir, name = assets.model_dir, DEMO_MODEL_NAME
    else:
        assert settings.model is not None  # checked by preflight
        specs = [(s.name, s.path, s.layer) for s in settings.sae]
        model_dir, name = settings.model, settings.model.name
    model = load_model(model_dir, device=device, dtype=dtype)
    attachments = tuple(
        SaeAttachment(n, load_sae(p, device=device), layer, sha256=file_sha256(sae_file(p)))
        for n, p, layer in specs
    ) + tuple(
        SaeAttachment(
            v.name, load_vectors(v.path, device=device), v.layer, sha256=file_sha256(v.path)
        )
        for v in settings.vector
    )
    specs += [(v.name, v.path, v.layer) for v in settings.vector]
    catalog = _catalog(settings, attachments, specs)
    presets = {}
    if settings.presets is not None:
        presets = load_presets(
            settings.presets,
            {a.name: a.sae.d_sae for a in attachments},
            {a.name: a.sha256 for a in attachments},
        )
    return Loaded(model, attachments, name, catalog, presets)


def _catalog(
    settings: Settings,
    attachments: tuple[SaeAttachment, ...],
    specs: list[tuple[str, Path, int]],
) -> Catalog:
    """Each SAE's labels: from --labels, else an explanations.json beside its file, else none."""
    given = {spec.name: spec.path for spec in settings.labels}
    labels = {}
    for attachment, (name, path, _) in zip(attachments, specs, strict=True):
        file = given.get(name) or labels_beside(path if path.is_file() else sae_file(path))
        if file is not None:
            labels[name] = load_labels(file, attachment.sae.d_sae)
            log.info("SAE %s: %d labels from %s", name, len(labels[name]), file)
    return Catalog(labels)


class SteeringApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.health = health_aio.HealthServicer()
        self.servicer = SteeringServicer(self.metrics)
        self.server: aio.Server | None = None
        self.frontend: FrontEnd | None = None
        self.port = 0
        self.metrics_port = 0
        self._metrics_http: Any = None
        self._draining = False
        self._errors = ErrorInterceptor(self._count_refused)

    async def start(self) -> None:
        s = self.settings
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._start_metrics()
        self.server = self._grpc_server()
        await self.server.start()
        log.info("gRPC listening on %s:%d (health NOT_SERVING while loading)", s.host, self.port)
        loaded = await asyncio.to_thread(load, s)
        graphs = hardware.cuda_graphs_wanted(s.cuda_graphs, resolve_device(s.device))
        config = EngineConfig(s.limits(), s.prefill_tokens_per_step, cuda_graphs=graphs)
        engine = Engine.from_loaded(loaded.model, loaded.attachments, config)
        self.frontend = FrontEnd(
            engine,
            loaded.model.tokenizer,
            name=loaded.name,
            catalog=loaded.catalog,
            presets=loaded.presets,
            on_admitted=self.metrics.on_admitted,
        )
        self.metrics.watch(engine.snapshot)
        self.frontend.start()
        await self.frontend.warm_up()
        engine.on_step = self.metrics.on_step
        self.servicer.ready(self.frontend)
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving %s with SAEs %s", loaded.name, [a.name for a in loaded.attachments] or "none"
        )
        self._write_ready_file()

    def _write_ready_file(self) -> None:
        """The ports, for tools: written whole (a rename), so a reader never sees half of it."""
        file = self.settings.ready_file
        if file is None:
            return
        ready = {
            "target": f"{_connect_host(self.settings.host)}:{self.port}",
            "port": self.port,
            "metrics_port": self.metrics_port,
            "pid": os.getpid(),
        }
        partial = file.with_name(f".{file.name}.partial")
        partial.write_text(json.dumps(ready) + "\n")
        partial.replace(file)

    def _start_metrics(self) -> None:
        s = self.settings
        try:
            self._metrics_http, _ = start_http_server(
                s.metrics_port, addr=s.host, registry=self.metrics.registry
            )
        except OSError as exc:
            raise StartupError(
                f"--metrics-port: cannot bind {s.host}:{s.metrics_port} ({exc})"
            ) from None
        self.metrics_port = int(self._metrics_http.server_port)
        log.info("metrics on http://%s:%d/metrics", self.settings.host, self.metrics_port)

    def _grpc_server(self) -> aio.Server:
        s = self.settings
        interceptors: list[aio.ServerInterceptor] = [self._errors]
        if s.auth_tokens:
            interceptors.insert(0, AuthInterceptor(s.auth_tokens, self._count_refused))
        options = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
        ]
        server = aio.server(interceptors=interceptors, options=options)
        pb_grpc.add_SteeringServiceServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        address = f"{s.host}:{s.port}"
        credentials = _credentials(s)
        try:
            self.port = (
                server.add_secure_port(address, credentials)
                if credentials
                else server.add_insecure_port(address)
            )
        except RuntimeError as exc:  # grpc says only "Failed to bind to address ..."
            raise StartupError(f"--port: cannot bind {address} ({exc})") from None
        return server

    def _count_refused(self, method: str, code: grpc.StatusCode) -> None:
        """Generate calls refused before the servicer (bad token, undecodable) count too."""
        if method == GENERATE_METHOD:
            self.metrics.on_finished(code.name.lower(), 0.0)

    async def drain(self, grace: float | None = None) -> None:
        """Stop taking calls, let those in flight finish within the grace period, then stop."""
        if self._draining:
            return
        self._draining = True
        grace = self.settings.grace_period_s if grace is None else grace
        await self.health.enter_graceful_shutdown()
        if self.frontend is not None:
            self.frontend.close()
        # Logged once it holds: health NOT_SERVING and new calls refused (tests wait for this).
        log.info("draining: health NOT_SERVING, new calls UNAVAILABLE, grace %.1f s", grace)
        if self.frontend is not None:
            deadline = time.monotonic() + grace
            while self.frontend.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await asyncio.to_thread(self.frontend.stop)  # what is left ends as UNAVAILABLE
        await self._errors.end_streams()
        if self.server is not None:
            await self.server.stop(grace=1.0)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        if self.settings.ready_file is not None:
            self.settings.ready_file.unlink(missing_ok=True)
        log.info("stopped")


def _connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]", "[::]": "[::1]"}.get(host, host)


def _credentials(s: Settings) -> grpc.ServerCredentials | None:
    if s.tls_cert is None or s.tls_key is None:  # both or neither: checked by preflight
        return None
    pair = [(Path(s.tls_key).read_bytes(), Path(s.tls_cert).read_bytes())]
    client_ca = Path(s.tls_client_ca).read_bytes() if s.tls_client_ca else None
    return grpc.ssl_server_credentials(
        pair, root_certificates=client_ca, require_client_auth=client_ca is not None
    )
