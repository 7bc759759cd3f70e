"""Steering vectors as a linear SAE: each edit mode equals its reference formula, a vector's
activation is its projection coefficient, and bad vector files are refused naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from steering import EditMode, FeatureEdit, build_tables
from steering.errors import SaeFormatError
from steering.sae.vectors import load_vectors
from steering.steer.tables import steer_rows

D_MODEL = 16


@pytest.fixture
def vectors() -> torch.Tensor:
    return torch.randn(3, D_MODEL, generator=torch.Generator().manual_seed(0)) * 2


@pytest.fixture(params=["safetensors", "npy"])
def vector_file(request: pytest.FixtureRequest, tmp_path: Path, vectors: torch.Tensor) -> Path:
    if request.param == "npy":
        np.save(tmp_path / "v.npy", vectors.numpy())
        return tmp_path / "v.npy"
    save_file({"anything": vectors}, str(tmp_path / "v.safetensors"))
    return tmp_path / "v.safetensors"


def test_activations_are_projection_coefficients(vector_file: Path, vectors: torch.Tensor) -> None:
    sae = load_vectors(vector_file)
    assert (sae.kind, sae.d_sae, sae.d_model) == ("vector", 3, D_MODEL)
    x = torch.randn(5, D_MODEL, generator=torch.Generator().manual_seed(1))
    expected = torch.stack([x @ v / (v @ v) for v in vectors], dim=1)  # may be negative
    assert torch.allclose(sae.encode(x), expected, atol=1e-5)
    assert (expected < 0).any()


@pytest.mark.parametrize(
    ("mode", "value"),
    [(EditMode.ADD, 1.5), (EditMode.SET, 2.0), (EditMode.SCALE, 3.0), (EditMode.ABLATE, 0.0)],
)
def test_each_edit_mode_equals_its_formula(
    vector_file: Path, vectors: torch.Tensor, mode: EditMode, value: float
) -> None:
    sae = load_vectors(vector_file)
    x = torch.randn(1, 4, D_MODEL, generator=torch.Generator().manual_seed(2))
    table = build_tables([[FeatureEdit("v", 1, mode, value)]], {"v": sae})["v"]
    got, _ = steer_rows(x, table)
    v = vectors[1]
    c = (x @ v) / (v @ v)  # (1, 4): the component along v
    new_c = {
        EditMode.ADD: c + value,
        EditMode.SET: torch.full_like(c, value),
        EditMode.SCALE: c * value,
        EditMode.ABLATE: torch.zeros_like(c),
    }[mode]
    expected = x + (new_c - c)[..., None] * v
    assert torch.allclose(got, expected, atol=1e-5)
    if mode is EditMode.ABLATE:
        assert torch.allclose(got @ v, torch.zeros(1, 4), atol=1e-4)  # projected out


def test_only_when_active_means_a_positive_coefficient(vector_file: Path) -> None:
    sae = load_vectors(vector_file)
    x = torch.randn(1, 6, D_MODEL, generator=torch.Generator().manual_seed(3))
    table = build_tables([[FeatureEdit("v", 0, EditMode.ADD, 1.0, True)]], {"v": sae})["v"]
    got, counts = steer_rows(x, table)
    positive = sae.encode(x)[0, :, 0] > 0
    changed = (got - x).abs().sum(-1)[0] > 0
    assert torch.equal(changed, positive)
    assert counts[0, 0].tolist() == [int(positive.sum())] * 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (torch.zeros(2, D_MODEL), "is zero"),
        (torch.full((2, D_MODEL), float("nan")), "finite"),
        (torch.ones(D_MODEL), "shape"),
        (torch.ones(2, D_MODEL, dtype=torch.int32), "floating"),
    ],
)
def test_bad_vector_files_name_the_file(
    tmp_path: Path, content: torch.Tensor, message: str
) -> None:
    file = tmp_path / "bad.safetensors"
    save_file({"v": content}, str(file))
    with pytest.raises(SaeFormatError, match=message) as err:
        load_vectors(file)
    assert str(file) in str(err.value)


def test_a_file_of_two_tensors_or_none_is_refused(tmp_path: Path) -> None:
    two = tmp_path / "two.safetensors"
    save_file({"a": torch.ones(1, 4), "b": torch.ones(1, 4)}, str(two))
    with pytest.raises(SaeFormatError, match="exactly one tensor"):
        load_vectors(two)
    with pytest.raises(SaeFormatError, match="no such file"):
        load_vectors(tmp_path / "missing.npy")


def test_a_tiny_vector_that_float32_can_serve_is_accepted(tmp_path: Path) -> None:
    """|v|² underflows float32 here, yet v and v / |v|² are both representable."""
    tiny = torch.randn(2, D_MODEL, generator=torch.Generator().manual_seed(2)) * 1e-25
    file = tmp_path / "tiny.safetensors"
    save_file({"v": tiny}, str(file))
    sae = load_vectors(file)
    x = torch.randn(3, D_MODEL, generator=torch.Generator().manual_seed(3)).double()
    v = tiny.double()
    expected = torch.stack([x @ row / (row @ row) for row in v], dim=1)
    assert torch.allclose(sae.encode(x.float()).double(), expected, rtol=1e-4)


def test_a_vector_too_small_to_divide_by_says_so(tmp_path: Path) -> None:
    vectors = torch.ones(2, D_MODEL)
    vectors[1] = 1e-44  # a float32 subnormal: not zero, but 1 / |v|² overflows float32
    file = tmp_path / "small.safetensors"
    save_file({"v": vectors}, str(file))
    with pytest.raises(SaeFormatError) as err:
        load_vectors(file)
    message = str(err.value)
    assert "vector 1" in message and "too small" in message and "zero" not in message


def test_vectors_that_overflow_float32_are_refused(tmp_path: Path) -> None:
    """Finite in float64, inf once cast to float32: refused, naming the file."""
    content = np.ones((2, D_MODEL))
    content[1, 3] = 1e300
    np.save(tmp_path / "big.npy", content)
    with pytest.raises(SaeFormatError, match="float32") as err:
        load_vectors(tmp_path / "big.npy")
    assert str(tmp_path / "big.npy") in str(err.value)
