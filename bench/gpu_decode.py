"""`python -m bench.gpu_decode OUT.json [BUDGET_S]`: the fast decode path on CUDA (bench/gpu.sh).

Gemma 2 2B and Gemma 3 1B shapes with random bf16 weights (built on the GPU: no downloads), at
batch 1, 8, 32 and 64: engine decode tokens/s unsteered vs steered (8 distinct features per
row, every row different, one 16k-wide SAE) with CUDA graphs, the same without graphs, and
Hugging Face `generate` with a static cache and `torch.compile` (batch 1 and 8: compiling is
slow). Each figure is written to the JSON as soon as it is measured, and a failing part is
recorded with its error, so a run cut short still reports what it got.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from steering.demo.toy import FAMILIES, random_sae
from steering.edits import EditMode
from steering.engine import Engine, EngineConfig
from steering.requests import FeatureEdit, GenerationRequest, Limits, SamplingParams
from steering.steer.hooks import SaeAttachment

SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "gemma-2-2b": ("gemma2", dict(
        hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, vocab_size=256000, sliding_window=4096,
        max_position_embeddings=8192,
    )),
    "gemma-3-1b": ("gemma3", dict(
        hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
        num_key_value_heads=1, head_dim=256, vocab_size=262144, sliding_window=512,
        max_position_embeddings=32768, query_pre_attn_scalar=256,
    )),
}  # fmt: skip
BATCHES = (1, 8, 32, 64)
PROMPT, NEW, D_SAE = 32, 64, 16384
GOALS = (
    "steered/unsteered >= 0.98 with graphs; gemma-2-2b steered batch 1 >= 500 tok/s, "
    "batch 32 >= 8000 tok/s; >= 1.2x HF compiled generate at batch 1"
)


def build(shape: str) -> Any:
    family, config = SHAPES[shape]
    config = dict(config)
    vocab = config.pop("vocab_size")
    model_config = FAMILIES[family](vocab, **config)
    if family == "gemma2":
        model_config._attn_implementation = "eager"  # soft-capping
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(model_config, dtype=torch.bfloat16)
    return model.eval()


def engine_for(model: Any, graphs: bool) -> Engine:
    d = model.config.get_text_config().hidden_size
    layer = model.config.get_text_config().num_hidden_layers // 2
    sae = random_sae(d, D_SAE, seed=1).to(model.device)
    limits = Limits(max_active_rows=max(BATCHES), max_prompt_tokens=PROMPT, max_new_tokens=NEW)
    config = EngineConfig(limits, cuda_graphs=graphs)
    return Engine(
        model,
        special_ids=[0, 1, 2],
        eos_ids=[1],
        attachments=[SaeAttachment("s", sae, layer)],
        config=config,
    )


def decode_rate(engine: Engine, n: int, steered: bool, vocab: int) -> float:
    gen = torch.Generator().manual_seed(n)
    sampling = SamplingParams(max_new_tokens=NEW, ignore_eos=True)
    for _ in range(n):
        prompt = (2, *torch.randint(10, vocab, (PROMPT - 1,), generator=gen).tolist())
        features = torch.randperm(D_SAE, generator=gen)[:8].tolist() if steered else []
        edits = tuple(FeatureEdit("s", f, EditMode.SET, 4.0) for f in features)
        engine.add(GenerationRequest(prompt, sampling, edits))
    engine.step()  # the prefill
    _sync()
    start, steps = time.perf_counter(), 0
    while not engine.idle:
        engine.step()
        steps += 1
    _sync()
    return n * (NEW - 1) / (time.perf_counter() - start)


def hf_compiled_rate(model: Any, n: int, vocab: int) -> float:
    ids = torch.randint(10, vocab, (n, PROMPT), device=model.device)
    kwargs = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                  cache_implementation="static", eos_token_id=None)  # fmt: skip
    # On CUDA with a static cache, `generate` compiles the forward itself (its auto-compile).
    for _ in range(2):  # compile and warm up
        model.generate(ids, **kwargs)
    _sync()
    start = time.perf_counter()
    model.generate(ids, **kwargs)
    _sync()
    return n * NEW / (time.perf_counter() - start)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "gpu.json")
    budget = float(sys.argv[2]) if len(sys.argv) > 2 else 420.0  # seconds, then stop measuring
    began = time.monotonic()
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(), "goals": GOALS, "runs": []}

    def record(**entry: Any) -> None:
        results["runs"].append(entry)
        out.write_text(json.dumps(results, indent=1))
        print(json.dumps(entry), flush=True)

    for shape in SHAPES:
        model = build(shape)
        vocab = model.config.get_text_config().vocab_size
        for graphs in (True, False):
            try:
                engine = engine_for(model, graphs)
                decode_rate(engine, 2, True, vocab)  # warm-up (captures small buckets)
                for n in BATCHES:
                    for steered in (False, True):
                        if time.monotonic() - began > budget:
                            record(shape=shape, skipped="time budget spent")
                            return
                        rate = decode_rate(engine, n, steered, vocab)
                        record(
                            shape=shape,
                            graphs=graphs,
                            batch=n,
                            steered=steered,
                            tokens_per_s=rate,
                            cuda_graphs=engine.cuda_graphs,  # "on", or "fallback: <why>"
                        )
                engine.hooks.remove()
            except Exception as exc:  # a part that fails is reported, the rest still runs
                record(
                    shape=shape,
                    graphs=graphs,
                    error=repr(exc),
                    trace=traceback.format_exc()[-2000:],
                )
        for n in (1, 8):
            if time.monotonic() - began > budget:
                break
            try:
                record(
                    shape=shape,
                    hf_generate_compiled=True,
                    batch=n,
                    tokens_per_s=hf_compiled_rate(model, n, vocab),
                )
            except Exception as exc:
                record(shape=shape, hf_generate_compiled=True, batch=n, error=repr(exc))
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
