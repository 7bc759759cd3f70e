"""Shared fixtures: one torch thread, no hub access, tiny Gemma folders built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Servers started by tests (in process or not) run float32 even where `--dtype auto` would pick
# bfloat16 (a CPU with native bf16): their outputs are compared with float32 references.
os.environ.setdefault("STEERING_DTYPE", "float32")

from pathlib import Path

import pytest
import torch

from steering import LoadedModel, load_model
from steering.demo.toy import build_model_folder

torch.set_num_threads(1)

FAMILIES = ("gemma2", "gemma3", "gemma3_multimodal")


@pytest.fixture(scope="session")
def model_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {family: build_model_folder(root / family, family, seed=1) for family in FAMILIES}


@pytest.fixture(scope="session", params=FAMILIES)
def tiny(request: pytest.FixtureRequest, model_folders: dict[str, Path]) -> LoadedModel:
    """Each tiny Gemma variant, loaded with the real loading code (float32, CPU)."""
    return load_model(model_folders[request.param], dtype=torch.float32)


@pytest.fixture(scope="session")
def gemma2(model_folders: dict[str, Path]) -> LoadedModel:
    return load_model(model_folders["gemma2"], dtype=torch.float32)
