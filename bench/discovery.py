"""Discovery scenarios: the cost of watching features while decoding, and of Inspect's top-k.

Watch reads K features per row at each step (O(K·d_model), like the sparse delta); Inspect's
top-k pays one full encode of each SAE over the prompt. Both run through the real engine.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from bench.common import Setup, Table, interleave
from bench.scenarios import SAES, engine_rates, make_engine, prompts
from steering.engine import Engine
from steering.requests import FeatureRef, GenerationRequest, InspectSpec, SamplingParams


def watch_overhead(
    model: Any, setup: Setup, batches: tuple[int, ...], prompt_len: int, new: int
) -> list[Table]:
    """Decode tokens/s with 8 watched features per request (spread over the SAEs) vs none."""
    engine = make_engine(model, setup, max(batches))
    vocab = model.config.get_text_config().vocab_size
    watch = tuple(FeatureRef(SAES[i % len(SAES)], 100 + 37 * i) for i in range(8))
    tables = []
    for n in batches:
        batch = prompts(n, prompt_len, vocab, seed=20 + n)
        runs = {
            "no watch": partial(engine_rates, engine, batch, [()] * n, new),
            "8 watched features": partial(engine_rates, engine, batch, [()] * n, new, watch=watch),
        }
        table = Table(f"Watching features while decoding, batch {n}", "", "no watch")
        tables.append(interleave(table, runs, setup.reps))
    engine.hooks.remove()
    return tables


def inspect_cost(model: Any, setup: Setup, length: int = 512) -> list[Table]:
    """One text of `length` tokens: Inspect (top 8 of every SAE at every token, 4 named features)
    vs the same prefill for a generation of one token."""
    engine = make_engine(model, setup, 1)
    (ids,) = prompts(1, length, model.config.get_text_config().vocab_size, seed=7)
    inspect = InspectSpec(SAES[:1], top_k=8, features=tuple(FeatureRef("a", i) for i in range(4)))
    runs = {
        "prefill alone": partial(_seconds, engine, GenerationRequest(ids, SamplingParams(1))),
        "Inspect, top 8 of 1 SAE": partial(
            _seconds, engine, GenerationRequest(ids, inspect=inspect)
        ),
    }
    title = f"Inspect of a {length}-token text (SAE width {setup.d_sae})"
    table = interleave(Table(title, "", "prefill alone"), runs, setup.reps)
    engine.hooks.remove()
    return [table]


def _seconds(engine: Engine, request: GenerationRequest) -> dict[str, float]:
    handle = engine.add(request)
    start = time.perf_counter()
    while not engine.idle:
        engine.step()
    seconds = time.perf_counter() - start
    out = handle.channel.take(0)
    assert out is not None and out.finished
    return {"requests/s": 1 / seconds, "ms": seconds * 1e3}
