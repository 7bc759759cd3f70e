"""A real server (gRPC and HTTP on port 0) on the tiny Gemma 2 with three SAEs and a preset, and
the official `openai` SDK pointed at its HTTP port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.harness import ServerThread

openai = pytest.importorskip("openai")

PRESETS = '[presets.calm]\ndescription = "test"\nedits = ["gs1:3=set:4", "gs2:7=ablate"]\n'


@pytest.fixture(scope="module")
def http_server(
    model_folders: dict[str, Path], sae_specs: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    presets = tmp_path_factory.mktemp("http") / "presets.toml"
    presets.write_text(PRESETS)
    srv = ServerThread(model=model_folders["gemma2"], sae=sae_specs, presets=presets)
    yield srv
    srv.close()


def base_url(srv: ServerThread) -> str:
    return f"http://127.0.0.1:{srv.app.http_port}"


@pytest.fixture(scope="module")
def client(http_server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url(http_server) + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def model_name(http_server: ServerThread) -> str:
    assert http_server.app.frontend is not None
    return http_server.app.frontend.name
