"""Engine throughput on CPU: concurrent requests vs one after another vs `model.generate`.

A Gemma-2-shaped random model (the `medium` preset: d_model 512, 8 layers, 32k vocab), float32,
one torch thread. Every figure is the median of interleaved repetitions, min-max alongside.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from steering import EditMode, FeatureEdit, SaeAttachment
from steering.engine import Engine, EngineConfig
from steering.requests import GenerationRequest, Limits, SamplingParams
from steering.toy import build_model, random_sae

PRESETS = {
    "tiny": dict(hidden_size=64, num_hidden_layers=4, vocab_size=512),
    "medium": dict(
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        vocab_size=32000,
    ),
}


def _model(preset: str) -> torch.nn.Module:
    config = dict(PRESETS[preset])
    vocab = int(config.pop("vocab_size"))
    return build_model("gemma2", vocab, seed=0, max_position_embeddings=4096, **config)


def _prompts(n: int, length: int, vocab: int, seed: int) -> list[tuple[int, ...]]:
    gen = torch.Generator().manual_seed(seed)
    return [(2, *torch.randint(10, vocab, (length - 1,), generator=gen).tolist()) for _ in range(n)]


def _edits(n: int, k: int, d_sae: int, seed: int) -> list[tuple[FeatureEdit, ...]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        tuple(
            FeatureEdit("sae", int(f), EditMode.SET, 4.0)
            for f in torch.randperm(d_sae, generator=gen)[:k]
        )
        for _ in range(n)
    ]


def engine_run(
    engine: Engine,
    prompts: list[tuple[int, ...]],
    new: int,
    edits: list[tuple[FeatureEdit, ...]] | None,
    concurrent: bool,
) -> int:
    """Tokens generated; all requests at once, or each after the previous finished."""

    def request(i: int) -> GenerationRequest:
        sampling = SamplingParams(max_new_tokens=new, ignore_eos=True)
        return GenerationRequest(prompts[i], sampling, edits[i] if edits else ())

    handles = []
    for i in range(len(prompts)):
        handles.append(engine.add(request(i)))
        if not concurrent:
            while not engine.idle:
                engine.step()
    while not engine.idle:
        engine.step()
    total = 0
    for handle in handles:
        while (out := handle.channel.take(0)) is not None:
            total += len(out.token_ids)
    return total


def generate_run(model: torch.nn.Module, prompts: list[tuple[int, ...]], new: int) -> int:
    """A static batch through `model.generate` (prompts of equal length: no padding)."""
    ids = torch.tensor(prompts)
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
        )
    return int(out.shape[0] * (out.shape[1] - ids.shape[1]))


def timed(fn: Callable[[], int]) -> float:
    start = time.perf_counter()
    tokens = fn()
    return tokens / (time.perf_counter() - start)


def report(title: str, results: dict[str, list[float]], baseline: str) -> None:
    print(f"\n{title}\n")
    print("| run | tokens/s (median) | min-max | vs " + baseline + " |")
    print("|---|---|---|---|")
    base = statistics.median(results[baseline])
    for name, samples in results.items():
        med = statistics.median(samples)
        print(f"| {name} | {med:.1f} | {min(samples):.1f}-{max(samples):.1f} | {med / base:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="medium", choices=sorted(PRESETS))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--k", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = _model(args.preset)
    vocab = int(model.config.vocab_size)
    d_model = int(model.config.hidden_size)
    layer = int(model.config.num_hidden_layers) // 2
    sae = SaeAttachment("sae", random_sae(d_model, args.d_sae, seed=1), layer=layer)
    limits = Limits(
        max_active_rows=max(args.concurrency), max_queued_requests=max(args.concurrency)
    )
    engine = Engine(
        model,
        special_ids=[0, 1, 2],
        eos_ids=[1],
        attachments=[sae],
        config=EngineConfig(limits=limits),
    )
    print(
        f"preset {args.preset}: d_model {d_model}, {model.config.num_hidden_layers} layers, "
        f"vocab {vocab}; prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens per "
        f"request; CPU, 1 thread; SAE width {args.d_sae} at layer {layer}, K={args.k}"
    )

    for n in args.concurrency:
        prompts = _prompts(n, args.prompt_tokens, vocab, seed=n)
        runs: dict[str, Callable[[], int]] = {
            f"engine, {n} concurrent": partial(
                engine_run, engine, prompts, args.new_tokens, None, True
            ),
            f"engine, {n} one after another": partial(
                engine_run, engine, prompts, args.new_tokens, None, False
            ),
            f"model.generate, static batch of {n}": partial(
                generate_run, model, prompts, args.new_tokens
            ),
        }
        results = _interleave(runs, args.reps)
        report(f"Concurrency {n}", results, f"engine, {n} one after another")

    n = 8
    prompts = _prompts(n, args.prompt_tokens, vocab, seed=100)
    edits = _edits(n, args.k, args.d_sae, seed=7)
    runs = {
        f"unsteered, {n} rows": partial(engine_run, engine, prompts, args.new_tokens, None, True),
        f"steered, {n} rows, K={args.k} different per row": partial(
            engine_run, engine, prompts, args.new_tokens, edits, True
        ),
    }
    report("Steered vs unsteered", _interleave(runs, args.reps), f"unsteered, {n} rows")


def _interleave(runs: dict[str, Callable[[], int]], reps: int) -> dict[str, list[float]]:
    for fn in runs.values():
        fn()  # warm-up
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(reps):
        for name, fn in runs.items():
            results[name].append(timed(fn))
    return results


if __name__ == "__main__":
    main()
