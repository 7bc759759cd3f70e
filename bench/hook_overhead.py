"""Cost of one steering hook call per decode step: sparse delta vs full encode/decode.

Gemma 2 2B's residual width (2304) and a 16k-wide JumpReLU SAE, random weights, K edits per
row, one torch thread. Each figure is the median over interleaved repetitions (min-max shown).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from steering import EditMode, FeatureEdit, apply_full, apply_sparse_delta, build_tables
from steering.toy import random_sae


def _time(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def run(
    d_model: int, d_sae: int, k: int, batch: int, reps: int, calls: int
) -> dict[str, list[float]]:
    sae = random_sae(d_model, d_sae, seed=0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, d_model, generator=gen)  # one decode step
    row_edits = [
        [
            FeatureEdit("s", int(f), EditMode.SET, 4.0)
            for f in torch.randperm(d_sae, generator=gen)[:k]
        ]
        for _ in range(batch)
    ]
    tables = build_tables(row_edits, {"s": sae})
    variants: dict[str, Callable[[], object]] = {
        "sparse (apply)": lambda: apply_sparse_delta(x, tables["s"]),
        "sparse (build + apply)": lambda: apply_sparse_delta(
            x, build_tables(row_edits, {"s": sae})["s"]
        ),
        "full encode/decode": lambda: apply_full(x, sae, tables["s"]),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        for fn in variants.values():
            fn()  # warm-up
        for _ in range(reps):
            for name, fn in variants.items():
                times[name].append(_time(fn, calls))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--d-model", type=int, default=2304)
    parser.add_argument("--d-sae", type=int, default=16384)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"d_model {args.d_model}, d_sae {args.d_sae}, K={args.k} edits per row, 1 thread, CPU")
    print("| batch | variant | ms per call (median) | min-max | full / this |")
    print("|---|---|---|---|---|")
    for batch in args.batch:
        times = run(args.d_model, args.d_sae, args.k, batch, args.reps, args.calls)
        full = statistics.median(times["full encode/decode"])
        for name, samples in times.items():
            med, lo, hi = (
                1e3 * v for v in (statistics.median(samples), min(samples), max(samples))
            )
            print(f"| {batch} | {name} | {med:.3f} | {lo:.3f}-{hi:.3f} | {full * 1e3 / med:.1f}x |")


if __name__ == "__main__":
    main()
