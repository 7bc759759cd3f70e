"""A running front end on a tiny Gemma folder with random SAEs, for tests that drive the core."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from steering import SaeAttachment, load_model
from steering.demo.toy import random_sae
from steering.engine import Engine, EngineConfig
from steering.frontend import FrontEnd


@contextmanager
def running_frontend(
    folder: Path, saes: Sequence[tuple[str, int, int, int]], config: EngineConfig | None = None
) -> Iterator[FrontEnd]:
    """`saes`: (name, layer, width, seed) of each SAE, in serving order."""
    loaded = load_model(folder, dtype=torch.float32)
    d_model = int(loaded.model.config.get_text_config().hidden_size)
    attachments = [
        SaeAttachment(name, random_sae(d_model, width, seed=seed, threshold=0.02), layer)
        for name, layer, width, seed in saes
    ]
    engine = Engine.from_loaded(loaded, attachments, config or EngineConfig())
    frontend = FrontEnd(engine, loaded.tokenizer)
    frontend.start()
    try:
        yield frontend
    finally:
        frontend.stop()
