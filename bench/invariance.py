"""Batch invariance: do identical greedy requests give the tokens of the request alone?

`python -m bench.invariance --dtype bfloat16` sends `--requests` identical greedy requests to an
engine, `--concurrent` at a time (a new one whenever one finishes), in two arrival patterns:
together (each group added in one step) and staggered (one added per step, so the decode batch
grows and shrinks under each request), and counts the requests whose tokens differ from the same
request run alone. Prints one line per preset and pattern.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from bench.common import Setup, build
from bench.scenarios import prompts
from steering.engine import Engine, EngineConfig
from steering.requests import GenerationRequest, Limits, SamplingParams


def _engine(model: Any, rows: int, new: int, **config: Any) -> Engine:
    limits = Limits(
        max_active_rows=rows, max_queued_requests=64, max_prompt_tokens=256, max_new_tokens=new
    )
    return Engine(model, special_ids=[0, 1, 2], eos_ids=[1], config=EngineConfig(limits, **config))


def _tokens(handle: Any) -> list[int]:
    out: list[int] = []
    while (chunk := handle.channel.take(0)) is not None:
        out += chunk.token_ids
    return out


def run(
    engine: Engine, prompt: tuple[int, ...], n: int, at_once: int, staggered: bool, new: int
) -> list[list[int]]:
    """n identical greedy requests, at most `at_once` in flight; each one's tokens."""
    sampling = SamplingParams(max_new_tokens=new, ignore_eos=True)
    pending, live, done = n, [], []
    while pending or live:
        room = at_once - len(live)
        for _ in range(min(room, pending, 1 if staggered else room)):
            live.append(engine.add(GenerationRequest(prompt, sampling)))
            pending -= 1
        engine.step()
        for handle in list(live):
            if handle.channel.closed:
                done.append(_tokens(handle))
                live.remove(handle)
    return done


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.invariance", description=__doc__)
    p.add_argument("--preset", nargs="+", default=["tiny", "medium"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--layers", type=int, help="fewer decoder layers than the preset")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--requests", type=int, default=12)
    p.add_argument("--concurrent", type=int, default=4)
    p.add_argument("--prompt-tokens", type=int, default=48)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument(
        "--decode-shapes",
        default="batch",
        choices=["batch", "context", "fixed"],
        help="EngineConfig.decode_shapes",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = {"decode_shapes": args.decode_shapes}
    for preset in args.preset:
        setup = Setup(
            preset, args.layers, torch.device(args.device), getattr(torch, args.dtype), 1, 0
        )
        model = build(setup)
        vocab = model.config.get_text_config().vocab_size
        (prompt,) = prompts(1, args.prompt_tokens, vocab, seed=5)
        engine = _engine(model, args.concurrent, args.new_tokens, **config)
        (alone,) = run(engine, prompt, 1, 1, False, args.new_tokens)
        for staggered in (False, True):
            start = time.perf_counter()
            outs = run(engine, prompt, args.requests, args.concurrent, staggered, args.new_tokens)
            seconds = time.perf_counter() - start
            differ = sum(out != alone for out in outs)
            pattern = "staggered" if staggered else "together"
            pattern += " fixed rows" if args.fixed_rows else ""
            print(
                f"{preset} {args.device} {args.dtype} {args.threads} thread(s) {pattern}: "
                f"{differ} of {len(outs)} differ from the request alone ({seconds:.2f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
