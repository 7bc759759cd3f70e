#!/usr/bin/env bash
# The benchmarks on a CUDA machine, bf16, the real Gemma 2 2B shape (random weights): one
# command that prints the Markdown tables and writes bench/results/gpu.json. Needs a Python
# with a CUDA build of torch; installs the project into it. Extra arguments go to `python -m bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device")'
"$PYTHON" -m pip install -q --no-deps -e .
"$PYTHON" -m pip install -q "grpcio>=1.85.1" "protobuf>=7.35.1" grpcio-health-checking grpcio-reflection \
    pydantic pydantic-settings prometheus-client "transformers>=5,<6" safetensors tokenizers
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PYTHON" -m bench --device cuda --dtype bfloat16 --preset gemma-2-2b \
    --batches 1 64 --rows 64 --clients 1 4 8 16 32 64 --reps 5 --json bench/results/gpu.json "$@"
