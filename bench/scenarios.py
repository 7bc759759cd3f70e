"""Engine-level scenarios: steering overhead, heterogeneous batches, sparse vs full hooks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any

import torch

from bench.common import Setup, Table, interleave
from steering import (
    EditMode,
    FeatureEdit,
    SaeAttachment,
    apply_full,
    apply_sparse_delta,
    build_tables,
)
from steering.demo.toy import random_sae
from steering.engine import Engine, EngineConfig
from steering.requests import FeatureRef, GenerationRequest, Limits, Rule, SamplingParams
from steering.steer import hooks as hooks_module
from steering.steer.slot_tables import reconstruct_slots
from steering.steer.tables import edit_counts, table_activations

Edits = tuple[FeatureEdit, ...]
SAES = ("a", "b", "c")


def make_engine(model: Any, setup: Setup, max_rows: int) -> Engine:
    """An engine with three SAEs on three middle layers; edits choose which ones steer."""
    c = model.config.get_text_config()
    mid = c.num_hidden_layers // 2
    layers = sorted({max(0, mid - 1), mid, min(c.num_hidden_layers - 1, mid + 1)})
    layers += [mid] * (3 - len(layers))
    attachments = [
        SaeAttachment(
            name, random_sae(c.hidden_size, setup.d_sae, seed=i).to(setup.device), layer=layer
        )
        for i, (name, layer) in enumerate(zip(SAES, layers, strict=True))
    ]
    # The static KV cache is sized from these limits: what the scenarios use, not the defaults.
    limits = Limits(
        max_active_rows=max_rows,
        max_queued_requests=max_rows,
        max_prompt_tokens=1024,
        max_new_tokens=1024,
    )
    return Engine(
        model,
        special_ids=[0, 1, 2],
        eos_ids=[1],
        attachments=attachments,
        config=EngineConfig(limits),
    )


def prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[tuple[int, ...]]:
    gen = torch.Generator().manual_seed(seed)
    return [(2, *torch.randint(10, vocab, (length - 1,), generator=gen).tolist()) for _ in range(n)]


def edit_sets(
    n: int, k: int, d_sae: int, saes: Sequence[str] = ("a",), *, distinct: bool, seed: int = 0
) -> list[Edits]:
    """`n` rows of `k` SET edits on each SAE: one set shared by all rows, or one per row."""
    gen = torch.Generator().manual_seed(seed)

    def one() -> Edits:
        return tuple(
            FeatureEdit(sae, int(f), EditMode.SET, 4.0)
            for sae in saes
            for f in torch.randperm(d_sae, generator=gen)[:k]
        )

    shared = one()
    return [one() if distinct else shared for _ in range(n)]


def engine_rates(
    engine: Engine,
    batch: Sequence[tuple[int, ...]],
    row_edits: Sequence[Edits],
    new: int,
    keep: list[list[int]] | None = None,
    watch: tuple[FeatureRef, ...] = (),
    rules: tuple[Rule, ...] = (),
) -> dict[str, float]:
    """Prefill and decode tokens/s of one batch added at once (the first step prefills it).

    `keep`, if given, receives each row's tokens; every row watches `watch` and has `rules`.
    """
    sampling = SamplingParams(max_new_tokens=new, ignore_eos=True)
    handles = [
        engine.add(GenerationRequest(p, sampling, e, watch=watch, rules=rules))
        for p, e in zip(batch, row_edits, strict=True)
    ]
    start = time.perf_counter()
    engine.step()
    prefilled = time.perf_counter()
    while not engine.idle:
        engine.step()
    end = time.perf_counter()
    rows = []
    for handle in handles:
        row: list[int] = []
        while (out := handle.channel.take(0)) is not None:
            row += out.token_ids
        rows.append(row)
    if keep is not None:
        keep[:] = rows
    tokens = sum(len(row) for row in rows)
    assert tokens == new * len(batch), "every row must generate all its tokens"
    return {
        "decode tokens/s": (tokens - len(batch)) / (end - prefilled),
        "prefill tokens/s": sum(len(p) for p in batch) / (prefilled - start),
    }


def overhead(
    model: Any, setup: Setup, batches: Sequence[int], prompt_len: int, new: int
) -> list[Table]:
    engine = make_engine(model, setup, max(batches))
    vocab = model.config.get_text_config().vocab_size
    tables = []
    for n in batches:
        batch = prompts(n, prompt_len, vocab, seed=n)
        variants: dict[str, list[Edits]] = {
            "unsteered": [()] * n,
            "K=8, 1 SAE": edit_sets(n, 8, setup.d_sae, distinct=False),
            "K=64, 1 SAE": edit_sets(n, 64, setup.d_sae, distinct=False),
            "K=8 on each of 3 SAEs, 3 layers": edit_sets(n, 8, setup.d_sae, SAES, distinct=False),
        }
        runs = {name: partial(engine_rates, engine, batch, e, new) for name, e in variants.items()}
        table = Table(f"Steering overhead through the engine, batch {n}", "", "unsteered")
        tables.append(interleave(table, runs, setup.reps))
    engine.hooks.remove()
    return tables


def heterogeneous(model: Any, setup: Setup, n: int, prompt_len: int, new: int) -> list[Table]:
    engine = make_engine(model, setup, n)
    batch = prompts(n, prompt_len, model.config.get_text_config().vocab_size, seed=3)
    variants = {
        "unsteered": [()] * n,
        f"one edit set shared by {n} rows (K=8)": edit_sets(n, 8, setup.d_sae, distinct=False),
        f"{n} different edit sets (K=8 each)": edit_sets(n, 8, setup.d_sae, distinct=True),
    }
    runs = {name: partial(engine_rates, engine, batch, e, new) for name, e in variants.items()}
    table = interleave(Table(f"Heterogeneous batch of {n} rows", "", "unsteered"), runs, setup.reps)
    engine.hooks.remove()
    return [table]


@contextmanager
def naive_full_hooks(sae: Any) -> Iterator[None]:
    """Make the hooks run the full encode/decode with the error term (what a naive hook does)."""
    original, original_slots = hooks_module.steer_rows, hooks_module.steer_slots

    def full(
        x: torch.Tensor, table: Any, steerable: torch.Tensor | None = None, latch: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:  # a prefill
        counts = edit_counts(table_activations(x, table), table, steerable)  # receipts, as before
        return apply_full(x, sae, table, steerable), counts

    def full_slots(
        x: torch.Tensor, sae_: Any, table: Any, step: Any, k: int, steerable: torch.Tensor | None
    ) -> torch.Tensor:  # a decode step: x̂' + (x - x̂) over every row's own edits
        xf = x.float()
        edited = reconstruct_slots(x, sae_, table, step, k, None).float()
        out = edited + (xf - sae_.decode(sae_.encode(xf)))
        if steerable is not None:
            out = torch.where(steerable[..., None], out, xf)
        return out.to(x.dtype)

    hooks_module.steer_rows, hooks_module.steer_slots = full, full_slots
    try:
        yield
    finally:
        hooks_module.steer_rows, hooks_module.steer_slots = original, original_slots


def sparse_vs_full(model: Any, setup: Setup, n: int, prompt_len: int, new: int) -> list[Table]:
    tables = [hook_calls(setup, batch) for batch in (1, 32)]
    engine = make_engine(model, setup, n)
    batch = prompts(n, prompt_len, model.config.get_text_config().vocab_size, seed=5)
    edits = edit_sets(n, 8, setup.d_sae, distinct=True)
    tokens: dict[str, list[list[int]]] = {}

    def run(kind: str) -> dict[str, float]:
        with naive_full_hooks(engine.hooks.saes["a"]) if kind == "full" else nullcontext():
            rates = engine_rates(engine, batch, edits, new, keep=tokens.setdefault(kind, []))
        return rates

    runs: dict[str, Callable[[], Mapping[str, float]]] = {
        "sparse delta (this server)": partial(run, "sparse"),
        "full encode/decode + error term": partial(run, "full"),
    }
    title = f"Sparse vs full hook through the engine, {n} rows, K=8 each"
    table = interleave(Table(title, "", "full encode/decode + error term"), runs, setup.reps)
    table.notes.append(
        f"Greedy tokens of the two hooks identical: {tokens['sparse'] == tokens['full']}."
    )
    engine.hooks.remove()
    return [*tables, table]


def hook_calls(setup: Setup, batch: int, d_model: int = 2304, k: int = 8, calls: int = 20) -> Table:
    """One hook call per decode step at Gemma 2 2B's width: sparse delta vs full encode/decode."""
    sae = random_sae(d_model, setup.d_sae, seed=0).to(setup.device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, d_model, generator=gen).to(setup.device, setup.dtype)
    row_edits = [
        [
            FeatureEdit("s", int(f), EditMode.SET, 4.0)
            for f in torch.randperm(setup.d_sae, generator=gen)[:k]
        ]
        for _ in range(batch)
    ]
    tables = build_tables(row_edits, {"s": sae})

    def timed(fn: Callable[[], object]) -> dict[str, float]:
        if setup.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if setup.device.type == "cuda":
            torch.cuda.synchronize()
        return {"ms per call": (time.perf_counter() - start) / calls * 1e3}

    runs = {
        "sparse delta": partial(timed, lambda: apply_sparse_delta(x, tables["s"])),
        "sparse delta, tables rebuilt": partial(
            timed, lambda: apply_sparse_delta(x, build_tables(row_edits, {"s": sae})["s"])
        ),
        "full encode/decode + error term": partial(timed, lambda: apply_full(x, sae, tables["s"])),
    }
    title = f"One hook call, d_model {d_model}, width {setup.d_sae}, K={k}, batch {batch}"
    with torch.inference_mode():
        return interleave(Table(title, "", "full encode/decode + error term"), runs, setup.reps)
