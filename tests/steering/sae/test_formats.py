"""Loading the three on-disk SAE formats, and the errors for malformed files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from steering import FORMATS, SaeFormatError, load_sae, save_sae
from steering.demo.toy import random_sae

D_MODEL, D_SAE = 16, 48


@pytest.fixture
def sae():
    return random_sae(D_MODEL, D_SAE, seed=3)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_loads_identical_parameters(tmp_path: Path, sae, fmt: str) -> None:
    folder = save_sae(sae, tmp_path / fmt, fmt)
    marking_file = folder / FORMATS[fmt].filename
    for path in (folder, marking_file, str(folder)):
        loaded = load_sae(path)
        assert (loaded.d_model, loaded.d_sae) == (D_MODEL, D_SAE)
        for name, tensor in sae.params().items():
            assert loaded.params()[name].dtype == torch.float32
            assert torch.equal(loaded.params()[name], tensor), (fmt, name)


def test_gemma_scope_1_keys_and_files_are_the_real_ones(tmp_path: Path, sae) -> None:
    save_sae(sae, tmp_path, "gemma_scope_1")
    with np.load(tmp_path / "params.npz") as data:
        assert sorted(data.files) == ["W_dec", "W_enc", "b_dec", "b_enc", "threshold"]
    save_sae(sae, tmp_path / "gs2", "gemma_scope_2")
    assert (tmp_path / "gs2" / "params.safetensors").is_file()
    save_sae(sae, tmp_path / "lens", "saelens")
    cfg = json.loads((tmp_path / "lens" / "cfg.json").read_text())
    assert (cfg["d_in"], cfg["d_sae"], cfg["architecture"]) == (D_MODEL, D_SAE, "jumprelu")


def test_load_to_dtype_and_device(tmp_path: Path, sae) -> None:
    loaded = load_sae(save_sae(sae, tmp_path), device="cpu", dtype=torch.bfloat16)
    assert loaded.W_enc.dtype == torch.bfloat16
    # Arithmetic stays in float32 whatever the storage.
    assert loaded.encode(torch.randn(2, D_MODEL)).dtype == torch.float32


def test_bfloat16_safetensors_are_read(tmp_path: Path, sae) -> None:
    save_file(
        {k.lower(): v.bfloat16() for k, v in sae.params().items()},
        str(tmp_path / "params.safetensors"),
    )
    loaded = load_sae(tmp_path)
    assert torch.equal(loaded.W_dec, sae.W_dec.bfloat16().float())


def _npz(folder: Path, params: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", **params)
    return folder


def _good(sae) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in sae.params().items()}


def test_missing_key_is_named(tmp_path: Path, sae) -> None:
    params = _good(sae)
    del params["threshold"]
    with pytest.raises(SaeFormatError, match=r"params\.npz: missing key 'threshold'"):
        load_sae(_npz(tmp_path, params))


def test_shape_mismatch_is_named(tmp_path: Path, sae) -> None:
    params = _good(sae)
    params["W_dec"] = params["W_dec"][:, :-1]
    with pytest.raises(SaeFormatError, match=r"params\.npz: 'W_dec' has shape \[48, 15\]"):
        load_sae(_npz(tmp_path, params))


def test_threshold_width_mismatch_is_named(tmp_path: Path, sae) -> None:
    params = _good(sae)
    params["threshold"] = params["threshold"][:10]
    with pytest.raises(
        SaeFormatError, match=r"'threshold' has shape \[10\]: its d_sae is 10 .* d_sae is 48"
    ):
        load_sae(_npz(tmp_path, params))


def test_wrong_rank_is_named(tmp_path: Path, sae) -> None:
    params = _good(sae)
    params["b_enc"] = params["b_enc"][None, :]
    with pytest.raises(SaeFormatError, match=r"'b_enc' has shape \[1, 48\], expected \[d_sae\]"):
        load_sae(_npz(tmp_path, params))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_named(tmp_path: Path, sae, bad: float) -> None:
    params = _good(sae)
    params["W_enc"][3, 4] = bad
    with pytest.raises(SaeFormatError, match=r"params\.npz: 'W_enc' holds non-finite values"):
        load_sae(_npz(tmp_path, params))


def test_integer_parameters_are_refused(tmp_path: Path, sae) -> None:
    params = _good(sae)
    params["b_dec"] = params["b_dec"].astype(np.int64)
    with pytest.raises(SaeFormatError, match=r"'b_dec' has dtype torch\.int64"):
        load_sae(_npz(tmp_path, params))


def test_lower_case_keys_required_for_gemma_scope_2(tmp_path: Path, sae) -> None:
    save_file(
        {k: v.contiguous() for k, v in sae.params().items()}, str(tmp_path / "params.safetensors")
    )
    with pytest.raises(SaeFormatError, match=r"params\.safetensors: missing key 'w_enc'"):
        load_sae(tmp_path)


def test_transcoder_skip_connection_is_refused(tmp_path: Path, sae) -> None:
    tensors = {k.lower(): v.contiguous() for k, v in sae.params().items()}
    tensors["affine_skip_connection"] = torch.zeros(D_MODEL, D_MODEL)
    save_file(tensors, str(tmp_path / "params.safetensors"))
    with pytest.raises(SaeFormatError, match="unexpected key 'affine_skip_connection'"):
        load_sae(tmp_path)


def test_corrupt_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "params.npz").write_bytes(b"not a zip")
    with pytest.raises(SaeFormatError, match=r"a/params\.npz: not a readable \.npz archive"):
        load_sae(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "params.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(
        SaeFormatError, match=r"b/params\.safetensors: not a readable safetensors file"
    ):
        load_sae(tmp_path / "b")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architecture": "topk"}, "architecture is 'topk'"),
        ({"apply_b_dec_to_input": True}, "apply_b_dec_to_input is set"),
        ({"normalize_activations": "expected_average_only_in"}, "normalize_activations="),
        ({"d_sae": 7}, r"d_sae=7 but W_enc has shape \[16, 48\]"),
    ],
)
def test_saelens_config_is_checked(
    tmp_path: Path, sae, change: dict[str, object], message: str
) -> None:
    save_sae(sae, tmp_path, "saelens")
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps(cfg | change))
    with pytest.raises(SaeFormatError, match=message):
        load_sae(tmp_path)


def test_saelens_without_cfg_is_named(tmp_path: Path, sae) -> None:
    save_sae(sae, tmp_path, "saelens")
    (tmp_path / "cfg.json").unlink()
    with pytest.raises(SaeFormatError, match=r"cfg\.json"):
        load_sae(tmp_path)


def test_path_problems_are_named(tmp_path: Path, sae) -> None:
    with pytest.raises(SaeFormatError, match="no such file or folder"):
        load_sae(tmp_path / "nowhere")
    with pytest.raises(SaeFormatError, match="no SAE file in this folder"):
        load_sae(tmp_path)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(SaeFormatError, match="unknown SAE file type"):
        load_sae(tmp_path / "x.txt")
    save_sae(sae, tmp_path / "both", "gemma_scope_1")
    save_sae(sae, tmp_path / "both", "gemma_scope_2")
    with pytest.raises(SaeFormatError, match="several SAE files"):
        load_sae(tmp_path / "both")
    assert torch.equal(load_sae(tmp_path / "both" / "params.npz").W_enc, sae.W_enc)


def test_encode_decode_follow_the_fixed_math(sae) -> None:
    x = torch.randn(5, D_MODEL)
    pre = x @ sae.W_enc + sae.b_enc
    f = sae.encode(x)
    assert torch.equal(f, torch.where(pre > sae.threshold, pre, torch.zeros_like(pre)))
    # Strict '>': a pre-activation exactly at the threshold does not fire.
    at_threshold = sae.threshold[None, :].clone()
    zero_input = torch.zeros(1, D_MODEL)
    shifted = type(sae)(**(sae.params() | {"b_enc": at_threshold[0]}))
    assert torch.count_nonzero(shifted.encode(zero_input)) == 0
    assert torch.allclose(sae.decode(f), f @ sae.W_dec + sae.b_dec)


@pytest.mark.parametrize("name", ["W_dec", "b_enc", "threshold"])
def test_values_that_overflow_float32_are_refused(tmp_path: Path, sae, name: str) -> None:
    """Finite in float64, inf once cast to the float32 the server computes in: refused."""
    params = {k: v.astype(np.float64) for k, v in _good(sae).items()}
    params[name].reshape(-1)[1] = 1e300
    with pytest.raises(SaeFormatError, match=rf"params\.npz: '{name}' .*float32"):
        load_sae(_npz(tmp_path, params))
