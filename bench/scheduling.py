"""Scheduling: what one request costs the others (chunked prefill, no padding, batch scaling).

- `stall`: a running stream's largest inter-token gap while a 4,000-token prompt prefills, at
  the budget `--budget` and at the engine's default budget; against the time of one decode step
  plus one prefill chunk of the budget's size (each timed alone in the same run), and divided by
  the stream's median gap.
- `mixed`: a 1,500-token text prefilled together with 15 short ones vs the 1,500-token text
  alone: seconds and peak memory. Peak memory is the process's peak resident set (VmHWM of
  /proc/self/status, reset through /proc/self/clear_refs before each run) above its resident set
  at the start of the run, with glibc's mmap threshold pinned and freed memory trimmed between
  runs, so that every large tensor is fresh pages (torch keeps no CPU allocator statistics, and
  tracemalloc does not see torch's allocations).
- `streams`: aggregate decode tokens/s of 8 concurrent streams vs 1.

Every figure is the median of interleaved repetitions (see bench.common).
"""

from __future__ import annotations

import ctypes
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import Setup, Table, interleave
from bench.scenarios import engine_rates, prompts
from steering.engine import Engine, EngineConfig
from steering.requests import GenerationRequest, Limits, SamplingParams

LONG_PROMPT = 4000
MIXED_LONG, MIXED_SHORT, MIXED_SHORTS = 1500, 16, 15


def _engine(model: Any, rows: int, budget: int, prompt_tokens: int, new_tokens: int) -> Engine:
    limits = Limits(
        max_active_rows=rows,
        max_queued_requests=2 * rows,
        max_prompt_tokens=prompt_tokens,
        max_new_tokens=new_tokens,
    )
    return Engine(
        model,
        special_ids=[0, 1, 2],
        eos_ids=[1],
        config=EngineConfig(limits, prefill_tokens_per_step=budget),
    )


def _drain(engine: Engine) -> None:
    while not engine.idle:
        engine.step()


def _timed_steps(engine: Engine, steps: int) -> list[float]:
    gaps = []
    for _ in range(steps):
        start = time.perf_counter()
        engine.step()
        gaps.append(time.perf_counter() - start)
    return gaps


def stall(model: Any, setup: Setup, budget: int) -> list[Table]:
    """The largest gap of a running stream while a long prompt prefills (see the module)."""
    vocab = model.config.get_text_config().vocab_size
    default = EngineConfig().prefill_tokens_per_step
    budgets = sorted({budget, default})
    engines = {b: _engine(model, 2, b, LONG_PROMPT + 8, 512) for b in budgets}
    (long,) = prompts(1, LONG_PROMPT, vocab, seed=7)
    (stream_prompt,) = prompts(1, 32, vocab, seed=8)
    (chunk_prompt,) = prompts(1, budget, vocab, seed=9)
    one = SamplingParams(max_new_tokens=1, ignore_eos=True)
    table = Table(
        f"A stream's inter-token gaps while a {LONG_PROMPT}-token prompt prefills",
        "s",
        f"decode step + one {budget}-token chunk",
    )

    def reference() -> dict[str, float]:
        engine = engines[budget]
        engine.add(GenerationRequest(chunk_prompt, one))
        (chunk,) = _timed_steps(engine, 1)  # one chunk of the budget's size, and its first token
        _drain(engine)
        engine.add(GenerationRequest(stream_prompt, SamplingParams(8, ignore_eos=True)))
        engine.step()
        step = statistics.median(_timed_steps(engine, 5))  # a decode step of the stream alone
        _drain(engine)
        return {"largest gap": step + chunk, "median gap": step}

    def run(b: int) -> dict[str, float]:
        engine = engines[b]
        chunks = -(-LONG_PROMPT // b)
        stream = SamplingParams(max_new_tokens=chunks + 24, ignore_eos=True)
        handle = engine.add(GenerationRequest(stream_prompt, stream))
        engine.step()
        before = _timed_steps(engine, 6)
        engine.add(GenerationRequest(long, one))
        during = _timed_steps(engine, chunks)  # every step decodes the stream once
        after = _timed_steps(engine, 6)
        engine.abort(handle.key)
        _drain(engine)
        median = statistics.median(before + after)  # the stream's gaps with no prefill beside
        return {
            "largest gap": max(during),
            "median gap": median,
            "largest / median": max(during) / median,
            "first chunk's gap": during[0],
            "last chunk's gap": during[-1],
            "prefill total": sum(during),
        }

    runs = {f"decode step + one {budget}-token chunk": reference}
    runs |= {
        f"budget {b}" + (" (the default)" if b == default else ""): _bind(run, b) for b in budgets
    }
    interleave(table, runs, setup.reps)
    table.notes.append(
        "Each step decodes the stream once, so a step's seconds are the stream's gap; median "
        "gap: the stream's steps before and after the prefill. The reference row times one "
        f"decode step of the stream alone plus one prefill of a {budget}-token prompt on an idle "
        "engine. prefill total: the steps of the long prompt's prefill, its chunks and the "
        "stream's decode steps beside them."
    )
    return [table]


def _bind(run: Any, b: int) -> Any:
    return lambda: run(b)


def mixed(model: Any, setup: Setup) -> list[Table]:
    """A 1,500-token text with 15 short ones vs alone: prefill seconds and peak memory."""
    vocab = model.config.get_text_config().vocab_size
    engine = _engine(model, 16, EngineConfig().prefill_tokens_per_step, MIXED_LONG, 8)
    (long,) = prompts(1, MIXED_LONG, vocab, seed=3)
    shorts = prompts(MIXED_SHORTS, MIXED_SHORT, vocab, seed=4)
    one = SamplingParams(max_new_tokens=1, ignore_eos=True)
    _pin_malloc()
    table = Table(
        f"A {MIXED_LONG}-token text with {MIXED_SHORTS} short ({MIXED_SHORT} tokens) vs alone",
        "",
        "alone",
    )

    def run(texts: list[tuple[int, ...]]) -> dict[str, float]:
        _trim()
        rss = _reset_peak()
        start = time.perf_counter()
        for text in texts:
            engine.add(GenerationRequest(text, one))
        _drain(engine)
        seconds = time.perf_counter() - start
        return {"s": seconds, "peak MB": (_peak() - rss) / 2**20}

    interleave(
        table,
        {"alone": lambda: run([long]), f"with {MIXED_SHORTS} short": lambda: run([long, *shorts])},
        setup.reps,
    )
    table.notes.append(
        "peak MB: the peak resident set above the resident set at the run's start (VmHWM, reset "
        "through /proc/self/clear_refs; glibc's mmap threshold pinned, freed memory trimmed)."
    )
    return [table]


def streams(model: Any, setup: Setup, new: int) -> list[Table]:
    """Aggregate decode tokens/s of 8 concurrent streams vs 1 (prompts of 32 tokens)."""
    vocab = model.config.get_text_config().vocab_size
    engine = _engine(model, 8, EngineConfig().prefill_tokens_per_step, 64, new)
    table = Table("Concurrent streams, decode tokens/s", "", "1 stream")
    runs = {}
    for n in (1, 8):
        batch = prompts(n, 32, vocab, seed=n)
        runs[f"{n} stream" + ("s" if n > 1 else "")] = _rates(engine, batch, new)
    interleave(table, runs, setup.reps)
    return [table]


def _rates(engine: Engine, batch: list[tuple[int, ...]], new: int) -> Any:
    def run() -> dict[str, float]:
        rates = engine_rates(engine, batch, [()] * len(batch), new)
        return {"decode tokens/s": rates["decode tokens/s"]}

    return run


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _rss_kb(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in {_STATUS}")


def _reset_peak() -> int:
    """Resets the peak resident set to the current one; the current one, in bytes."""
    _CLEAR_REFS.write_text("5")
    return _rss_kb("VmRSS") * 1024


def _peak() -> int:
    return _rss_kb("VmHWM") * 1024


def _libc() -> Any:
    return ctypes.CDLL("libc.so.6")


def _pin_malloc() -> None:
    """Large blocks always mmap'd (and unmapped when freed): no adaptive threshold."""
    _libc().mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


def _trim() -> None:
    _libc().malloc_trim(0)
