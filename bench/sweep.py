"""`python -m bench.sweep`: one Sweep (6 strengths × 8 prompts, every generation in one batch,
then every output scored) against the same 48 greedy generations sent one by one.

python -m bench.sweep                 # the demo's Gemma 3 270M (the `demo` extra), float32
python -m bench.sweep --tiny          # a tiny random Gemma 2 with a random SAE
One run each, wall-clock seconds; the ratio is what to read (set one torch thread on a shared
CPU). The Sweep's time includes its scoring, which the one-by-one runs do not do.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from contextlib import aclosing
from pathlib import Path
from typing import Any

import torch

from steering import SaeAttachment, load_model, load_sae
from steering.demo.gemma import NEUTRAL_PROMPTS
from steering.demo.toy import build_model_folder, random_sae
from steering.discovery.catalog import Catalog
from steering.discovery.labels import load_label_file
from steering.edits import EditMode, FeatureEdit
from steering.engine import Engine, EngineConfig
from steering.frontend import FrontEnd, sweep
from steering.requests import FeatureRef, Limits, SamplingParams, SweepRequest, TextRequest

PROMPTS = NEUTRAL_PROMPTS
STRENGTHS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


def _front(tiny: bool, rows: int, folder: Path) -> tuple[FrontEnd, FeatureRef]:
    limits = Limits(max_active_rows=rows)
    if tiny:
        loaded = load_model(build_model_folder(folder, "gemma2", seed=1), dtype=torch.float32)
        d_model = int(loaded.model.config.get_text_config().hidden_size)
        sae = SaeAttachment("s", random_sae(d_model, 64, seed=3, threshold=0.02), layer=1)
        catalog = Catalog({}, typical_max={"s": {5: 4.0}})
        ref = FeatureRef("s", 5)
    else:
        from steering.demo.gemma import DEMO_FEATURES, default_demo_dir, prepare_demo

        demo = prepare_demo(default_demo_dir())
        loaded = load_model(demo.model_dir, dtype=torch.float32)
        sae = SaeAttachment(demo.sae_name, load_sae(demo.sae_dir), demo.layer)
        read = load_label_file(demo.sae_dir / "explanations.json", sae.sae.d_sae)
        catalog = Catalog({}, typical_max={demo.sae_name: read.typical_max})
        sea = DEMO_FEATURES["sea"]
        ref = FeatureRef(sea.sae, sea.feature)
    engine = Engine.from_loaded(loaded, [sae], EngineConfig(limits=limits))
    return FrontEnd(engine, loaded.tokenizer, catalog=catalog), ref


async def _one_by_one(front: FrontEnd, ref: FeatureRef, values: list[float], new: int) -> None:
    for value in values:
        edits = (FeatureEdit(ref.sae, ref.feature, EditMode.SET, value),) if value else ()
        for prompt in PROMPTS:
            request = TextRequest(prompt, sampling=SamplingParams(max_new_tokens=new), edits=edits)
            async with aclosing(front.generate(request)) as chunks:
                async for _ in chunks:
                    pass


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__)
    p.add_argument("--tiny", action="store_true", help="a tiny random model instead of the demo")
    p.add_argument("--rows", type=int, default=16, help="max_active_rows (a Sweep holds half)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        front, ref = _front(args.tiny, args.rows, Path(tmp))
        front.start()
        try:
            request = SweepRequest(
                ref, PROMPTS, strengths=STRENGTHS, max_new_tokens=args.max_new_tokens
            )
            asyncio.run(sweep(front, SweepRequest(ref, PROMPTS[:1], max_new_tokens=2)))  # warm
            start = time.perf_counter()
            points = asyncio.run(sweep(front, request))
            swept = time.perf_counter() - start
            values = [point.value for point in points]
            start = time.perf_counter()
            asyncio.run(_one_by_one(front, ref, values, args.max_new_tokens))
            single = time.perf_counter() - start
        finally:
            front.stop()
    result: dict[str, Any] = {
        "model": "tiny" if args.tiny else "demo Gemma 3 270M",
        "generations": len(PROMPTS) * len(STRENGTHS),
        "max_new_tokens": args.max_new_tokens,
        "max_active_rows": args.rows,
        "sweep_s": round(swept, 2),
        "one_by_one_s": round(single, 2),
        "speedup": round(single / swept, 2),
    }
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
