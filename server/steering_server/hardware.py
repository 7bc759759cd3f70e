"""What the machine offers the model: native bf16 on the CPU, CUDA graphs. Reads only flags."""

from __future__ import annotations

from pathlib import Path

import torch

# x86 flags of CPUs that compute in bf16 natively (AVX512-BF16, AMX): there bf16 decodes
# 1.7-3x faster than float32; elsewhere torch emulates it, slower than float32.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU lists a native bf16 flag (False where /proc/cpuinfo cannot be read)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return bool(NATIVE_BF16_FLAGS & set(value.split()))
    return False


def cuda_graphs_wanted(setting: str, device: torch.device) -> bool:
    """`--cuda-graphs`: auto is on where the model runs on CUDA; on is only for CUDA (the
    preflight refuses it elsewhere)."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")
