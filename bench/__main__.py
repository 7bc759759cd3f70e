"""`python -m bench`: the benchmarks, as Markdown tables on stdout and JSON in a file.

python -m bench --preset medium                       # every scenario, CPU defaults
python -m bench --scenario overhead sparse --reps 7
python -m bench --preset gemma-2-2b --layers 4        # the real 2B shape, fewer layers
python -m bench --preset tiny --scenario stall mixed streams  # what one request costs others
python -m bench --preset medium --scenario logprobs --batches 1 8  # top_logprobs 5 vs none
python -m bench --device cuda --dtype bfloat16 --preset gemma-2-2b --batches 1 64
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
from pathlib import Path

import torch

from bench.common import PRESETS, Setup, Table, build
from bench.decode import decode_rates, join_cost
from bench.discovery import inspect_cost, watch_overhead
from bench.logprobs import logprobs_cost
from bench.policies import rules_overhead, vector_batch
from bench.scenarios import heterogeneous, overhead, sparse_vs_full
from bench.scheduling import mixed, stall, streams
from bench.serving import grpc_cost, http_cost, serving

SCENARIOS = (
    "overhead",
    "heterogeneous",
    "sparse",
    "serving",
    "grpc",
    "http",
    "watch",
    "inspect",
    "rules",
    "vectors",
    "decode",
    "join",
    "stall",
    "mixed",
    "streams",
    "logprobs",
)


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--preset", default="medium", help=f"{', '.join(PRESETS)}, or a local model folder"
    )
    p.add_argument(
        "--layers", type=int, help="fewer decoder layers than the preset (stated in the output)"
    )
    p.add_argument("--scenario", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument(
        "--batches", type=int, nargs="+", default=[1, 32], help="overhead scenario batch sizes"
    )
    p.add_argument("--rows", type=int, default=32, help="rows of the heterogeneous scenario")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument(
        "--budget", type=int, default=256, help="the stall scenario's prefill token budget"
    )
    p.add_argument("--json", type=Path, default=Path("bench/results/latest.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    setup = Setup(
        args.preset,
        args.layers,
        torch.device(args.device),
        getattr(torch, args.dtype),
        args.reps,
        args.d_sae,
    )
    model = build(setup)
    header = f"{setup.describe(model)}; {datetime.date.today()}, {platform.machine()}"
    print(header)
    tables: list[Table] = []
    run = {
        "overhead": lambda: overhead(
            model, setup, args.batches, args.prompt_tokens, args.new_tokens
        ),
        "heterogeneous": lambda: heterogeneous(
            model, setup, args.rows, args.prompt_tokens, args.new_tokens
        ),
        "sparse": lambda: sparse_vs_full(model, setup, 8, args.prompt_tokens, args.new_tokens),
        "serving": lambda: serving(model, setup, args.clients, args.new_tokens),
        "grpc": lambda: grpc_cost(model, setup, 8, args.new_tokens),
        "http": lambda: http_cost(model, setup, 8, args.new_tokens),
        "watch": lambda: watch_overhead(model, setup, (1, 16), args.prompt_tokens, args.new_tokens),
        "inspect": lambda: inspect_cost(model, setup),
        "rules": lambda: rules_overhead(model, setup, 16, args.prompt_tokens, args.new_tokens),
        "decode": lambda: decode_rates(
            model, setup, args.batches, args.prompt_tokens, args.new_tokens
        ),
        "join": lambda: join_cost(model, setup, 32, 256, setup.reps),
        "stall": lambda: stall(model, setup, args.budget),
        "mixed": lambda: mixed(model, setup),
        "streams": lambda: streams(model, setup, args.new_tokens),
        "logprobs": lambda: logprobs_cost(
            model, setup, args.batches, args.prompt_tokens, args.new_tokens
        ),
        "vectors": lambda: vector_batch(
            model, setup, 16, args.prompt_tokens, args.new_tokens, Path(tempfile.mkdtemp())
        ),
    }
    for name in args.scenario:
        for table in run[name]():
            print("\n" + table.markdown(), flush=True)
            tables.append(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"setup": header, "tables": [t.as_json() for t in tables]}, indent=1)
    )
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
