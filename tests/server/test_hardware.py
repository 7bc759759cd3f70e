"""What the server reads of the machine: native bf16 flags, and when CUDA graphs are on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from steering_server import app, hardware

CPUINFO = """processor\t: 0
model name\t: Some CPU
flags\t\t: fpu sse2 avx2 {extra} avx512f
"""


@pytest.mark.parametrize(
    ("extra", "native"),
    [("avx512_bf16", True), ("amx_bf16 amx_tile", True), ("avx512_vnni", False), ("", False)],
)
def test_native_bf16_from_the_cpu_flags(tmp_path: Path, extra: str, native: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra=extra))
    assert hardware.cpu_has_native_bf16(cpuinfo) is native
    assert hardware.cpu_has_native_bf16(tmp_path / "missing") is False


def test_auto_dtype_is_bf16_on_a_native_bf16_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    assert app.resolve_dtype("auto", cpu) is torch.bfloat16
    assert app.resolve_dtype("float32", cpu) is torch.float32  # a pinned dtype stays pinned
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    assert app.resolve_dtype("auto", cpu) is torch.float32
    assert app.resolve_dtype("auto", torch.device("cuda")) is torch.bfloat16


def test_cuda_graphs_auto_follows_the_device() -> None:
    assert hardware.cuda_graphs_wanted("auto", torch.device("cuda"))
    assert not hardware.cuda_graphs_wanted("auto", torch.device("cpu"))
    assert not hardware.cuda_graphs_wanted("off", torch.device("cuda"))
    assert hardware.cuda_graphs_wanted("on", torch.device("cuda"))


def test_decode_shapes_auto_reads_the_whole_context_in_bfloat16_without_cuda_graphs() -> None:
    """bfloat16 attention rounds differently with the keys the longest row brings (the demo's
    greedy text changed beside a longer prompt, tests/real_model/test_invariance.py): the
    default reads every slot's whole context there."""
    assert app.decode_shapes("auto", torch.bfloat16, cuda_graphs=False) == "context"
    assert app.decode_shapes("auto", torch.float32, cuda_graphs=False) == "batch"
    assert app.decode_shapes("auto", torch.bfloat16, cuda_graphs=True) == "batch"
    assert app.decode_shapes("fixed", torch.float32, cuda_graphs=False) == "fixed"
    assert app.decode_shapes("batch", torch.bfloat16, cuda_graphs=False) == "batch"
