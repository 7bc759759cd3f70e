"""On-disk SAE formats: a registry of readers and writers, and `load_sae` / `save_sae`.

Formats: Gemma Scope 1 (`params.npz`), Gemma Scope 2 (`params.safetensors`, lower-case keys)
and SAELens folders (`cfg.json` + `sae_weights.safetensors`). Every problem with a file is a
`SaeFormatError` naming the file; nothing here knows about models or edits.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from steering.errors import SaeFormatError
from steering.sae.jumprelu import PARAM_SHAPES, JumpReLUSAE, shape_problem

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SaeFormat:
    """One on-disk layout: the file that marks it, and how to read and write its tensors."""

    name: str
    filename: str
    read: Callable[[Path], Params]  # the marking file -> parameters under canonical names
    write: Callable[[Path, Params], None]  # folder, parameters -> files in that folder


FORMATS: dict[str, SaeFormat] = {}


def register_format(fmt: SaeFormat) -> SaeFormat:
    FORMATS[fmt.name] = fmt
    return fmt


def _pick(file: Path, raw: dict[str, Any], key_of: Callable[[str], str]) -> Params:
    """Canonical parameters from a file's tensors, refusing missing or extra keys."""
    missing = [key_of(name) for name in PARAM_SHAPES if key_of(name) not in raw]
    if missing:
        raise SaeFormatError(
            f"{file}: missing key {', '.join(map(repr, missing))} (found: {', '.join(sorted(raw))})"
        )
    unknown = sorted(set(raw) - {key_of(name) for name in PARAM_SHAPES})
    if unknown:
        raise SaeFormatError(
            f"{file}: unexpected key {', '.join(map(repr, unknown))}: "
            "only plain JumpReLU SAEs are supported (no transcoders or skip connections)"
        )
    return {name: _as_tensor(raw[key_of(name)]) for name in PARAM_SHAPES}


def _as_tensor(value: Any) -> torch.Tensor:
    # safetensors already gives tensors (bf16 among them, which numpy cannot hold).
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.array(value))


def _read_npz(file: Path) -> Params:
    try:
        with np.load(file) as data:
            raw = {key: data[key] for key in data.files}
    except Exception as exc:  # numpy raises many types for a bad archive
        raise SaeFormatError(f"{file}: not a readable .npz archive ({exc})") from exc
    return _pick(file, raw, lambda name: name)


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except Exception as exc:  # safetensors raises its own error types
        raise SaeFormatError(f"{file}: not a readable safetensors file ({exc})") from exc


def _write_npz(folder: Path, params: Params) -> None:
    arrays: dict[str, Any] = {k: v.float().cpu().numpy() for k, v in params.items()}
    np.savez(folder / "params.npz", **arrays)


def _read_gemma_scope_2(file: Path) -> Params:
    return _pick(file, _read_safetensors(file), str.lower)


def _write_gemma_scope_2(folder: Path, params: Params) -> None:
    tensors = {k.lower(): v.float().cpu().contiguous() for k, v in params.items()}
    save_file(tensors, str(folder / "params.safetensors"))


def _read_saelens(file: Path) -> Params:
    cfg_file = file.parent / "cfg.json"
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise SaeFormatError(
            f"{cfg_file}: a SAELens folder needs a readable cfg.json ({exc})"
        ) from exc
    if not isinstance(cfg, dict):
        raise SaeFormatError(f"{cfg_file}: expected a JSON object")
    architecture = cfg.get("architecture", "jumprelu")
    if architecture != "jumprelu":
        raise SaeFormatError(
            f"{cfg_file}: architecture is {architecture!r}, only 'jumprelu' is supported"
        )
    if cfg.get("apply_b_dec_to_input"):
        raise SaeFormatError(
            f"{cfg_file}: apply_b_dec_to_input is set; Gemma Scope SAEs do not use it"
        )
    if cfg.get("normalize_activations") not in (None, "none"):
        raise SaeFormatError(
            f"{cfg_file}: normalize_activations={cfg['normalize_activations']!r} is not supported"
        )
    params = _pick(file, _read_safetensors(file), lambda name: name)
    for key, dim in (("d_in", 0), ("d_sae", 1)):
        if key in cfg and cfg[key] != params["W_enc"].shape[dim]:
            raise SaeFormatError(
                f"{cfg_file}: {key}={cfg[key]} but W_enc has shape {list(params['W_enc'].shape)}"
            )
    return params


def _write_saelens(folder: Path, params: Params) -> None:
    d_model, d_sae = params["W_enc"].shape
    cfg = {
        "architecture": "jumprelu",
        "d_in": int(d_model),
        "d_sae": int(d_sae),
        "dtype": "float32",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
    }
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2))
    tensors = {k: v.float().cpu().contiguous() for k, v in params.items()}
    save_file(tensors, str(folder / "sae_weights.safetensors"))


GEMMA_SCOPE_1 = register_format(SaeFormat("gemma_scope_1", "params.npz", _read_npz, _write_npz))
GEMMA_SCOPE_2 = register_format(
    SaeFormat("gemma_scope_2", "params.safetensors", _read_gemma_scope_2, _write_gemma_scope_2)
)
SAELENS = register_format(
    SaeFormat("saelens", "sae_weights.safetensors", _read_saelens, _write_saelens)
)


def sae_file(path: str | Path) -> Path:
    """The parameter file that `load_sae(path)` would read; SaeFormatError if there is none."""
    return _resolve(Path(path))[1]


def file_sha256(file: Path) -> str:
    """Lowercase hex SHA-256 of a file (an SAE's parameters: what presets pin)."""
    digest = hashlib.sha256()
    with file.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def sae_shape(path: str | Path) -> tuple[int, int] | None:
    """(d_model, d_sae) from W_enc's shape in the parameter file's header, without reading the
    weights; None where the header does not say (`load_sae` then names the problem)."""
    file = sae_file(path)
    try:
        if file.suffix == ".npz":
            with zipfile.ZipFile(file) as archive, archive.open("W_enc.npy") as member:
                version = np.lib.format.read_magic(member)
                read = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape = read(member)[0]
        else:
            with safe_open(str(file), framework="numpy") as tensors:
                (key,) = [k for k in tensors.keys() if k.lower() == "w_enc"]  # noqa: SIM118
                shape = tuple(tensors.get_slice(key).get_shape())
    except Exception:  # a file these readers cannot parse: loading says why, naming it
        return None
    return (int(shape[0]), int(shape[1])) if len(shape) == 2 else None


def _resolve(path: Path) -> tuple[SaeFormat, Path]:
    """The format and the marking file of a folder or a file."""
    if path.is_dir():
        found = [
            (fmt, path / fmt.filename)
            for fmt in FORMATS.values()
            if (path / fmt.filename).is_file()
        ]
        if not found:
            expected = ", ".join(fmt.filename for fmt in FORMATS.values())
            raise SaeFormatError(
                f"{path}: no SAE file in this folder (expected one of: {expected})"
            )
        if len(found) > 1:
            names = ", ".join(file.name for _, file in found)
            raise SaeFormatError(
                f"{path}: several SAE files in one folder ({names}); name the file"
            )
        return found[0]
    if not path.is_file():
        raise SaeFormatError(f"{path}: no such file or folder")
    for fmt in FORMATS.values():
        if path.name == fmt.filename:
            return fmt, path
    by_suffix = {".npz": GEMMA_SCOPE_1, ".safetensors": GEMMA_SCOPE_2}
    if path.suffix in by_suffix:
        return by_suffix[path.suffix], path
    raise SaeFormatError(f"{path}: unknown SAE file type (expected .npz or .safetensors)")


def load_sae(
    path: str | Path,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> JumpReLUSAE:
    """Load a JumpReLU SAE from a Gemma Scope 1/2 or SAELens folder, or from the file itself."""
    fmt, file = _resolve(Path(path))
    params = fmt.read(file)
    problem = shape_problem(params)
    if problem:
        raise SaeFormatError(f"{file}: {problem}")
    for name, tensor in params.items():
        if not tensor.is_floating_point():
            raise SaeFormatError(
                f"{file}: '{name}' has dtype {tensor.dtype}, expected floating point"
            )
        if not torch.isfinite(tensor).all():
            raise SaeFormatError(f"{file}: '{name}' holds non-finite values (NaN or inf)")
        # Finite in float64 is not finite in float32: 1e300 becomes inf, and inf weights would
        # turn every steered row that reads them into NaN. Check what is served, after the cast.
        params[name] = tensor.to(dtype=dtype)
        if not torch.isfinite(params[name]).all():
            kind = str(dtype).removeprefix("torch.")
            raise SaeFormatError(f"{file}: '{name}' holds values too large for {kind}")
    return JumpReLUSAE.from_params({k: v.to(device=device) for k, v in params.items()})


def save_sae(sae: JumpReLUSAE, folder: str | Path, fmt: str = "gemma_scope_2") -> Path:
    """Write `sae` into `folder` in the named format; returns the folder."""
    if fmt not in FORMATS:
        raise SaeFormatError(f"unknown SAE format {fmt!r} (known: {', '.join(FORMATS)})")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    FORMATS[fmt].write(out, sae.params())
    return out
