"""Servers on tiny Gemma 2 / Gemma 3 models with SAEs in each on-disk format."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from steering import save_sae
from steering.demo.toy import random_sae
from tests.server.harness import ServerThread

D_MODEL = 64  # the tiny models' width
SAES = (
    ("gs1", "gemma_scope_1", 1, 128),
    ("gs2", "gemma_scope_2", 2, 96),
    ("lens", "saelens", 1, 64),
)


@pytest.fixture(scope="session")
def sae_specs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """`NAME=PATH@LAYER` of three SAEs, one per file format, two sharing layer 1."""
    root = tmp_path_factory.mktemp("saes")
    specs = []
    for i, (name, fmt, layer, width) in enumerate(SAES):
        folder = save_sae(random_sae(D_MODEL, width, seed=10 + i, threshold=0.02), root / name, fmt)
        specs.append(f"{name}={folder}@{layer}")
    return specs


@pytest.fixture(scope="module", params=["gemma2", "gemma3"])
def server(
    request: pytest.FixtureRequest, model_folders: dict[str, Path], sae_specs: list[str]
) -> Iterator[ServerThread]:
    srv = ServerThread(model=model_folders[request.param], sae=sae_specs)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def gemma2_server(model_folders: dict[str, Path], sae_specs: list[str]) -> Iterator[ServerThread]:
    srv = ServerThread(model=model_folders["gemma2"], sae=sae_specs)
    yield srv
    srv.close()
