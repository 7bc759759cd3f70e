"""Log-probabilities: decode tokens/s with `top_logprobs` 5 on every row vs without, side by
side in one run (greedy and sampled rows, at batch 1 and 8). The goal is a ratio of at least
0.97: the values are computed on the device for the rows that ask and ride in the step's one
device-to-host copy.

Every figure is the median of interleaved repetitions (see bench.common).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from bench.common import Setup, Table, interleave
from bench.scenarios import prompts
from steering.engine import Engine, EngineConfig
from steering.requests import GenerationRequest, Limits, SamplingParams

TOP = 5


def logprobs_cost(
    model: Any, setup: Setup, batches: Sequence[int], prompt_tokens: int, new: int
) -> list[Table]:
    vocab = model.config.get_text_config().vocab_size
    rows = max(batches)
    limits = Limits(
        max_active_rows=rows,
        max_queued_requests=rows,
        max_prompt_tokens=prompt_tokens,
        max_new_tokens=new,
    )
    engine = Engine(model, special_ids=[0, 1, 2], eos_ids=[1], config=EngineConfig(limits))
    tables = []
    for temperature in (0.0, 1.0):
        kind = "greedy" if temperature == 0 else "sampled"
        for n in batches:
            batch = prompts(n, prompt_tokens, vocab, seed=n)
            table = Table(f"Log-probabilities, {kind}, batch {n}: decode tokens/s", "", "without")
            runs = {
                "without": _run(engine, batch, new, temperature, None),
                f"top_logprobs {TOP}": _run(engine, batch, new, temperature, TOP),
            }
            interleave(table, runs, setup.reps)
            tables.append(table)
    return tables


def _run(
    engine: Engine, batch: list[tuple[int, ...]], new: int, temperature: float, top: int | None
) -> Any:
    sampling = SamplingParams(
        max_new_tokens=new, ignore_eos=True, temperature=temperature, seed=0, top_logprobs=top
    )

    def run() -> dict[str, float]:
        handles = [engine.add(GenerationRequest(p, sampling)) for p in batch]
        engine.step()  # prefills the batch: its first tokens
        start = time.perf_counter()
        while not engine.idle:
            engine.step()
        seconds = time.perf_counter() - start
        scored = 0
        for handle in handles:
            while (out := handle.channel.take(0)) is not None:
                scored += len(out.logprobs)
        assert scored == (new * len(batch) if top is not None else 0)
        return {"decode tokens/s": (new - 1) * len(batch) / seconds}

    return run
