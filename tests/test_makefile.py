"""Where `make` takes torch from: PyTorch's CPU index beside pip's own where there is no NVIDIA
GPU (PyPI's default torch brings several GB of CUDA wheels) and that index's host resolves,
PyPI's build where there is one, and TORCH_INDEX when given. Read from `make -n` (nothing is
installed); the CPU index is pointed at hosts that resolve (localhost) or never do (.invalid)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CPU_INDEX = "https://localhost/whl/cpu"  # resolves anywhere
UNREACHABLE = "https://pytorch.invalid/whl/cpu"  # resolves nowhere (RFC 2606)

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _torch_install(tmp_path: Path, *args: str, gpu: bool) -> str:
    """The command `make` would run to install torch into a new virtual environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    path = os.environ["PATH"].split(os.pathsep)
    path = [p for p in path if not (Path(p) / "nvidia-smi").exists()]  # this machine's GPU
    if gpu:
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "TORCH_INDEX"}
    env["PATH"] = os.pathsep.join([str(bin_dir), *path])
    venv = tmp_path / "venv"
    out = subprocess.run(
        [
            "make",
            "-n",
            "-B",
            f"VENV={venv}",
            f"TORCH_CPU_INDEX={CPU_INDEX}",
            *args,
            f"{venv}/.installed",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (line,) = [line for line in out.splitlines() if "pip install -q torch==" in line]
    return line.split(" -m pip install -q ", 1)[1].strip()


def test_without_a_gpu_torch_comes_from_the_cpu_index_beside_pips_own(tmp_path: Path) -> None:
    assert _torch_install(tmp_path, gpu=False) == f"torch==2.13.0 --extra-index-url {CPU_INDEX}"


def test_a_cpu_index_that_does_not_resolve_is_left_out(tmp_path: Path) -> None:
    assert _torch_install(tmp_path, f"TORCH_CPU_INDEX={UNREACHABLE}", gpu=False) == "torch==2.13.0"


def test_with_a_gpu_torch_comes_from_pips_index(tmp_path: Path) -> None:
    assert _torch_install(tmp_path, gpu=True) == "torch==2.13.0"


def test_torch_index_chooses_the_index(tmp_path: Path) -> None:
    cuda = "https://download.pytorch.org/whl/cu130"
    assert _torch_install(tmp_path, f"TORCH_INDEX={cuda}", gpu=False) == (
        f"torch==2.13.0 --extra-index-url {cuda}"
    )
    (tmp_path / "bin").rename(tmp_path / "bin-1")
    assert _torch_install(tmp_path, "TORCH_INDEX=", gpu=False) == "torch==2.13.0"
