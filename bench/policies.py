"""Policy scenarios: the cost of conditional rules while decoding, and of serving many distinct
steering vectors in one batch (each row adding its own vector through the sparse delta)."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch

from bench.common import Setup, Table, interleave
from bench.scenarios import engine_rates, make_engine, prompts
from steering import EditMode, FeatureEdit, SaeAttachment
from steering.engine import Engine, EngineConfig
from steering.requests import FeatureRef, Limits, Rule
from steering.sae.vectors import load_vectors


def rules_overhead(model: Any, setup: Setup, n: int, prompt_len: int, new: int) -> list[Table]:
    """Decode tokens/s of n rows with 4 rules each (conditions read at every position; none
    fires, so the text is the same) vs no rules."""
    engine = make_engine(model, setup, n)
    batch = prompts(n, prompt_len, model.config.get_text_config().vocab_size, seed=31)
    rules = tuple(
        Rule(
            FeatureRef(sae, 200 + i),
            1e9,
            apply=(FeatureEdit("c", 300 + i, EditMode.SET, 4.0),) if i % 2 else (),
            stop=i % 2 == 0,
        )
        for i, sae in enumerate(("a", "b", "a", "c"))
    )
    runs = {
        "no rules": partial(engine_rates, engine, batch, [()] * n, new),
        "4 rules per row": partial(engine_rates, engine, batch, [()] * n, new, rules=rules),
    }
    table = interleave(Table(f"Rules while decoding, {n} rows", "", "no rules"), runs, setup.reps)
    engine.hooks.remove()
    return [table]


def vector_batch(
    model: Any, setup: Setup, n: int, prompt_len: int, new: int, tmp: Any
) -> list[Table]:
    """n rows, each adding a different one of n steering vectors, vs the same rows unsteered."""
    c = model.config.get_text_config()
    vectors = torch.randn(n, c.hidden_size, generator=torch.Generator().manual_seed(5))
    path = tmp / "vectors.npy"
    np.save(path, vectors.numpy())
    sae = load_vectors(path, device=setup.device)
    # The static KV cache is sized from these limits: what the scenario uses, not the defaults.
    limits = Limits(
        max_active_rows=n, max_queued_requests=n, max_prompt_tokens=1024, max_new_tokens=1024
    )
    engine = Engine(
        model,
        special_ids=[0, 1, 2],
        eos_ids=[1],
        attachments=[SaeAttachment("vec", sae, c.num_hidden_layers // 2)],
        config=EngineConfig(limits),
    )
    batch = prompts(n, prompt_len, c.vocab_size, seed=41)
    edits = [(FeatureEdit("vec", i, EditMode.ADD, 0.5),) for i in range(n)]
    runs = {
        "unsteered": partial(engine_rates, engine, batch, [()] * n, new),
        f"{n} distinct vectors": partial(engine_rates, engine, batch, edits, new),
    }
    title = f"{n} distinct steering vectors in one batch"
    table = interleave(Table(title, "", "unsteered"), runs, setup.reps)
    engine.hooks.remove()
    return [table]
