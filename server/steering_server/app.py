"""Assembling and running the service: load, warm up, serve, drain.

`SteeringApp.start()` binds the metrics endpoint, the gRPC edge (`grpc_api`, health
NOT_SERVING) and the HTTP edge (`http_api`, /health 503; not with `--no-http`), loads the model
and SAEs (or the demo), starts the engine thread, runs one warm-up generation, then hands the
front end to both edges and marks health SERVING. `drain()` is the
SIGTERM path: NOT_SERVING, refuse new calls, let calls in flight finish within the grace period,
then stop. Knows no transport's library: each edge is its own subpackage.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from prometheus_client import start_http_server

from steering import LoadedModel, SaeAttachment, load_model, load_sae
from steering.demo.gemma import MODEL_NAME as DEMO_MODEL_NAME
from steering.demo.gemma import prepare_demo
from steering.discovery.catalog import Catalog
from steering.discovery.labels import labels_beside, load_label_file
from steering.engine import Engine, EngineConfig
from steering.engine.engine import DecodeShapes
from steering.frontend import FrontEnd
from steering.sae.formats import file_sha256, sae_file
from steering.sae.vectors import load_vectors
from steering.steer.presets import Preset, load_presets
from steering_server import hardware
from steering_server.grpc_api.server import GrpcEdge
from steering_server.http_api.server import HttpEdge
from steering_server.metrics import Metrics
from steering_server.preflight import StartupError
from steering_server.settings import Settings

log = logging.getLogger(__name__)


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


def decode_shapes(setting: str, dtype: torch.dtype, cuda_graphs: bool) -> DecodeShapes:
    """The decode's shapes: `auto` reads the whole context where bfloat16 (or float16) attention
    would round differently with the keys the longest row brings (float32 gave the same bits at
    any length on the CPUs measured; CUDA graphs replay their own buckets)."""
    if setting == "auto":
        return "context" if dtype != torch.float32 and not cuda_graphs else "batch"
    return cast(DecodeShapes, setting)


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
            settings.limits(),
            catalog.typical_max,
        )
    return Loaded(model, attachments, name, catalog, presets)


def _catalog(
    settings: Settings,
    attachments: tuple[SaeAttachment, ...],
    specs: list[tuple[str, Path, int]],
) -> Catalog:
    """Each SAE's labels: from --labels, else an explanations.json beside its file, else none."""
    given = {spec.name: spec.path for spec in settings.labels}
    labels, typical_max, frequency, contexts = {}, {}, {}, {}
    for attachment, (name, path, _) in zip(attachments, specs, strict=True):
        file = given.get(name) or labels_beside(path if path.is_file() else sae_file(path))
        if file is not None:
            read = load_label_file(file, attachment.sae.d_sae)
            labels[name], typical_max[name], frequency[name] = (
                read.labels,
                read.typical_max,
                read.frequency,
            )
            contexts[name] = read.top_contexts
            log.info(
                "SAE %s: %d labels, %d typical maxima from %s",
                name,
                len(read.labels),
                len(read.typical_max),
                file,
            )
    return Catalog(labels, typical_max=typical_max, frequency=frequency, top_contexts=contexts)


class SteeringApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.grpc = GrpcEdge(settings, self.metrics)
        self.http = None if settings.no_http else HttpEdge(settings, self.metrics)
        self.frontend: FrontEnd | None = None
        self.metrics_port = 0
        self._metrics_http: Any = None
        self._draining = False
        self._hurry = asyncio.Event()  # set: the grace period ends now

    @property
    def port(self) -> int:
        """The gRPC port, as bound (port 0 picks one)."""
        return self.grpc.port

    @property
    def http_port(self) -> int:
        """The HTTP port, as bound (0: no HTTP)."""
        return self.http.port if self.http is not None else 0

    async def start(self) -> None:
        s = self.settings
        self._start_metrics()
        await self.grpc.start()
        if self.http is not None:
            await self.http.start()
        loaded = await asyncio.to_thread(load, s)
        graphs = hardware.cuda_graphs_wanted(s.cuda_graphs, resolve_device(s.device))
        config = EngineConfig(
            s.limits(),
            s.prefill_tokens_per_step,
            cuda_graphs=graphs,
            decode_shapes=decode_shapes(s.decode_shapes, loaded.model.model.dtype, graphs),
        )
        engine = Engine.from_loaded(loaded.model, loaded.attachments, config)
        self.frontend = FrontEnd(
            engine,
            loaded.model.tokenizer,
            name=loaded.name,
            catalog=loaded.catalog,
            presets=loaded.presets,
            on_admitted=self.metrics.on_admitted,
            max_message_bytes=s.max_message_bytes,
        )
        self.metrics.watch(engine.snapshot)
        self.frontend.start()
        await self.frontend.warm_up()
        engine.on_step = self.metrics.on_step
        await self.grpc.serve(self.frontend)
        if self.http is not None:
            self.http.serve(self.frontend)
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
            "http_port": self.http_port,
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

    def hurry(self) -> None:
        """End the grace period of a drain now (a second signal): what is left ends UNAVAILABLE."""
        log.warning("second signal: ending the calls in flight now")
        self._hurry.set()

    async def drain(self, grace: float | None = None) -> None:
        """Stop taking calls, let those in flight finish within the grace period (or until
        `hurry`), then stop."""
        if self._draining:
            return
        self._draining = True
        grace = self.settings.grace_period_s if grace is None else grace
        await self.grpc.begin_drain()
        if self.http is not None:
            self.http.begin_drain()
        if self.frontend is not None:
            self.frontend.close()
        # Logged once it holds: health NOT_SERVING and new calls refused (tests wait for this).
        log.info("draining: health NOT_SERVING, new calls UNAVAILABLE, grace %.1f s", grace)
        if self.frontend is not None:
            deadline = time.monotonic() + grace
            while self.frontend.in_flight and time.monotonic() < deadline:
                if self._hurry.is_set():
                    break
                await asyncio.sleep(0.02)
            await asyncio.to_thread(self.frontend.stop)  # what is left ends as UNAVAILABLE
        await self.grpc.stop()
        if self.http is not None:
            await self.http.stop()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        if self.settings.ready_file is not None:
            self.settings.ready_file.unlink(missing_ok=True)
        log.info("stopped")


def _connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
    return {"0.0.0.0": "127.0.0.1", "::": "[::1]", "[::]": "[::1]"}.get(host, host)
