"""What the batch-invariant decode costs: decode tokens/s of a served model (a local folder, e.g.
the demo's) in float32 and bfloat16 at the batch's shapes, and in bfloat16 reading every slot's
whole context (what the server's default `--decode-shapes auto` runs in bfloat16) and at fixed
rows and context, at 1 and 8 concurrent greedy streams, with the server's default limits (16
rows, prompts of 4,096 and 1,024 new tokens: the whole context an invariant decode reads).

    python -m bench.invariant_cost ~/.cache/steering-server/model --reps 3
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from bench.common import Table, interleave
from steering import load_model
from steering.engine import Engine, EngineConfig
from steering.engine.engine import DecodeShapes
from steering.requests import GenerationRequest, Limits, SamplingParams

VARIANTS: dict[str, tuple[torch.dtype, DecodeShapes]] = {
    "float32, batch shapes": (torch.float32, "batch"),
    "bfloat16, batch shapes": (torch.bfloat16, "batch"),
    "bfloat16, whole context (the default)": (torch.bfloat16, "context"),
    "bfloat16, fixed rows and context": (torch.bfloat16, "fixed"),
}


def _rate(engine: Engine, prompt: tuple[int, ...], streams: int, new: int) -> float:
    sampling = SamplingParams(max_new_tokens=new, ignore_eos=True)
    for _ in range(streams):
        engine.add(GenerationRequest(prompt, sampling))
    engine.step()  # prefill and the first tokens
    start, steps = time.perf_counter(), 0
    while not engine.idle:
        engine.step()
        steps += 1
    return streams * steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a local model folder")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=24)
    args = p.parse_args()
    torch.set_num_threads(1)
    engines: dict[str, tuple[Engine, tuple[int, ...]]] = {}
    for name, (dtype, shapes) in VARIANTS.items():
        lm = load_model(args.model, dtype=dtype)
        config = EngineConfig(Limits(), decode_shapes=shapes)
        prompt = tuple(lm.tokenizer("My favourite breakfast is").input_ids)
        engines[name] = (Engine.from_loaded(lm, (), config), prompt)
    baseline = "bfloat16, batch shapes"
    table = Table("Decode tokens/s by dtype and decode shapes", "tokens/s", baseline)

    def run(name: str) -> Any:
        engine, prompt = engines[name]
        return lambda: {
            f"{n} stream{'s' * (n > 1)}": _rate(engine, prompt, n, args.new_tokens) for n in (1, 8)
        }

    interleave(table, {name: run(name) for name in VARIANTS}, args.reps)
    print(table.markdown())


if __name__ == "__main__":
    main()
