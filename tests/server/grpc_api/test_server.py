"""The gRPC edge's port: a server never shares it with another."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from steering_server.grpc_api.server import GrpcEdge
from steering_server.metrics import Metrics
from steering_server.preflight import StartupError
from steering_server.settings import Settings
from tests.server.harness import ServerThread


def test_a_second_server_on_a_port_in_use_is_refused_naming_the_port(
    model_folders: dict[str, Path],
) -> None:
    first = ServerThread(model=model_folders["gemma2"])
    try:
        settings = Settings(
            host="127.0.0.1",
            port=first.app.port,
            metrics_port=0,
            http_port=0,
            model=model_folders["gemma2"],
        )
        second = GrpcEdge(settings, Metrics())
        with pytest.raises(StartupError, match=f"--port: cannot bind 127.0.0.1:{first.app.port}"):
            asyncio.run(second.start())
        asyncio.run(second.stop())  # reached only where it bound: close it
    finally:
        first.close()
