#!/usr/bin/env bash
# The fast decode path on a CUDA machine (no network there): Gemma 2 2B and Gemma 3 1B shapes
# with random bf16 weights, batch 1/8/32/64, unsteered vs steered (8 distinct features per row)
# with and without CUDA graphs, vs Hugging Face `generate` with a static cache and
# torch.compile. Needs a Python with CUDA torch and transformers 5 already installed (nothing is
# installed here); writes $OUT/gpu.json (or bench/results/gpu.json) as it goes, in < 8 minutes.
# Extra arguments: the JSON path, then the measuring budget in seconds (default 420).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD:$PWD/server:$PWD/clients/python${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device")'
"$PYTHON" -c 'import transformers, sys; sys.exit(0 if transformers.__version__.startswith("5.") else "transformers 5 is needed")'
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
DEST=${OUT:-bench/results}
mkdir -p "$DEST"
timeout 460 "$PYTHON" -m bench.gpu_decode "${1:-$DEST/gpu.json}" "${2:-420}"
