"""The decode path: engine decode tokens/s by batch size, and what a request joining costs.

`python -m bench.decode` runs both on their own (and writes no JSON), so that the same file can
time an older checkout of the engine: copy it into that checkout's `bench/` and run it there.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch

from bench.common import Setup, Table, build, interleave
from bench.scenarios import edit_sets, engine_rates, make_engine, prompts
from steering.requests import GenerationRequest, SamplingParams


def decode_rates(
    model: Any, setup: Setup, batches: Sequence[int], prompt_len: int, new: int
) -> list[Table]:
    """Decode tokens/s per batch size, unsteered and with 8 distinct features per row."""
    engine = make_engine(model, setup, max(batches))
    vocab = model.config.get_text_config().vocab_size
    table = Table("Engine decode by batch size", "", "batch 1, unsteered")
    runs = {}
    for n in batches:
        batch = prompts(n, prompt_len, vocab, seed=n)
        steered = edit_sets(n, 8, setup.d_sae, distinct=True, seed=n)
        runs[f"batch {n}, unsteered"] = partial(engine_rates, engine, batch, [()] * n, new)
        runs[f"batch {n}, 8 features per row"] = partial(engine_rates, engine, batch, steered, new)
    interleave(table, runs, setup.reps)
    engine.hooks.remove()
    return [table]


def join_cost(model: Any, setup: Setup, rows: int, prompt_len: int, reps: int) -> list[Table]:
    """Seconds of a step in which one request joins a running batch of `rows`, beside a plain
    step of that batch and the new request's prefill alone on an idle engine."""
    engine = make_engine(model, setup, rows + reps + 1)
    vocab = model.config.get_text_config().vocab_size
    long = SamplingParams(max_new_tokens=4 * reps + 64, ignore_eos=True)
    short = SamplingParams(max_new_tokens=2, ignore_eos=True)
    newcomers = prompts(2 * reps + 1, 32, vocab, seed=99)
    table = Table(f"Step seconds, a batch of {rows} (prompts of {prompt_len})", "s", "plain step")
    for _ in range(reps):  # alone: the newcomer's prefill, nothing running
        table.add("prefill alone, idle engine", {"": _timed_step(engine, newcomers.pop(), short)})
        while not engine.idle:
            engine.step()
    running = [engine.add(GenerationRequest(p, long)) for p in prompts(rows, prompt_len, vocab)]
    for _ in range(8):
        engine.step()
    for _ in range(reps):
        table.add("plain step", {"": _timed_step(engine)})
        table.add("a request joins", {"": _timed_step(engine, newcomers.pop(), short)})
    for handle in running:
        engine.abort(handle.key)
    while not engine.idle:
        engine.step()
    engine.hooks.remove()
    return [table]


def _timed_step(engine: Any, prompt: tuple[int, ...] | None = None, sampling: Any = None) -> float:
    if prompt is not None:
        engine.add(GenerationRequest(prompt, sampling))
    start = time.perf_counter()
    engine.step()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__)
    p.add_argument("--preset", default="medium")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--join-prompt-tokens", type=int, default=256)
    args = p.parse_args()
    torch.set_num_threads(1)
    setup = Setup(
        args.preset, None, torch.device("cpu"), getattr(torch, args.dtype), args.reps, 16384
    )
    model = build(setup)
    print(setup.describe(model))
    tables = decode_rates(model, setup, args.batches, 32, args.new_tokens)
    tables += join_cost(model, setup, 32, args.join_prompt_tokens, 5)
    for table in tables:
        print("\n" + table.markdown())
        for variant, samples in table.rows.items():
            print(variant, {m: round(statistics.median(s), 5) for m, s in samples.items()})


if __name__ == "__main__":
    main()
