"""Server settings: one pydantic object from CLI flags, `STEERING_*` variables and a config file.

Priority, highest first: command-line flags, environment, the config file (TOML or JSON, named
by `--config` or `STEERING_CONFIG`), defaults. Nothing here loads a model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from steering.requests import Limits

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SaeSpec(BaseModel, frozen=True):
    """`NAME=PATH@LAYER`: serve the SAE at PATH under NAME, reading decoder layer LAYER."""

    name: str
    path: Path
    layer: int

    @classmethod
    def parse(cls, text: str) -> SaeSpec:
        name, eq, rest = text.partition("=")
        path, at, layer = rest.rpartition("@")
        if not (eq and at and name and path and layer.isdigit()):
            raise ValueError(f"expected NAME=PATH@LAYER, got {text!r}")
        return cls(name=name, path=Path(path), layer=int(layer))


class LabelSpec(BaseModel, frozen=True):
    """`NAME=PATH`: feature labels of the SAE served under NAME."""

    name: str
    path: Path

    @classmethod
    def parse(cls, text: str) -> LabelSpec:
        name, eq, path = text.partition("=")
        if not (eq and name and path):
            raise ValueError(f"expected NAME=PATH, got {text!r}")
        return cls(name=name, path=Path(path))


def _split(value: Any) -> Any:
    """Lists from the environment may be comma-separated: `a,b` as well as `["a", "b"]`."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            return json.loads(stripped)
        return [part.strip() for part in stripped.split(",") if part.strip()]
    return value


def _flag(flag: str) -> dict[str, Any]:
    """A command-line flag named otherwise than `--<field-name>`."""
    return {"flag": flag}


class Settings(BaseSettings):
    """Every setting; each field's description is its `--help` line."""

    model_config = SettingsConfigDict(env_prefix="STEERING_", extra="forbid")

    model: Path | None = Field(
        None, description="local Hugging Face model folder, or a GGUF file (the `gguf` extra)"
    )
    sae: Annotated[list[SaeSpec], NoDecode] = Field(
        default_factory=list,
        description="an SAE to serve, NAME=PATH@LAYER (repeatable)",
        json_schema_extra=_flag("--sae"),
    )
    vector: Annotated[list[SaeSpec], NoDecode] = Field(
        default_factory=list,
        description="steering vectors ([n, d_model] safetensors or .npy) served as a linear SAE, "
        "NAME=PATH@LAYER (repeatable)",
        json_schema_extra=_flag("--vector"),
    )
    presets: Path | None = Field(None, description="TOML file of named edit sets (presets)")
    labels: Annotated[list[LabelSpec], NoDecode] = Field(
        default_factory=list,
        description="feature labels of an SAE, NAME=PATH (repeatable; default: an "
        "explanations.json beside the SAE's file)",
        json_schema_extra=_flag("--labels"),
    )
    demo: bool = Field(
        False,
        description="serve the demo: Gemma 3 270M with the SAE trained for it (the `demo` extra)",
    )
    host: str = Field("0.0.0.0", description="address to bind")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 picks a free one)")
    http_port: int = Field(
        8000,
        ge=0,
        le=65535,
        description="HTTP port: OpenAI-compatible and steering JSON routes (0 picks a free one)",
    )
    no_http: bool = Field(False, description="serve no HTTP (gRPC and metrics only)")
    metrics_port: int = Field(
        9090, ge=0, le=65535, description="Prometheus port (0 picks a free one)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the model runs")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="the model's dtype; auto: bfloat16 on CUDA and on CPUs with native bf16 "
        "(AVX512-BF16, AMX), else float32 (SAE arithmetic is float32 whatever this is)",
    )
    cuda_graphs: Literal["auto", "on", "off"] = Field(
        "auto", description="replay decode steps from CUDA graphs (auto: on with CUDA)"
    )
    # Limits of what one request may ask, and of the traffic the engine takes.
    max_active_rows: int = Field(16, ge=1, description="requests decoded together in one batch")
    max_queued_requests: int = Field(
        64, ge=0, description="requests waiting beyond those; more are refused at once"
    )
    max_prompt_tokens: int = Field(4096, ge=1, description="most tokens in a prompt, BOS included")
    max_new_tokens: int = Field(1024, ge=1, description="largest max_new_tokens a request may ask")
    default_max_new_tokens: int = Field(
        64, ge=1, description="new tokens when a request asks for 0"
    )
    max_edits_per_request: int = Field(64, ge=0, description="most feature edits in a request")
    max_abs_edit_value: float = Field(
        1e4, gt=0, le=1e6, description="largest |value| of a feature edit"
    )
    max_stop_strings: int = Field(8, ge=0, description="most stop strings in a request")
    max_stop_string_chars: int = Field(64, ge=1, description="most characters in a stop string")
    max_top_k: int = Field(64, ge=1, description="largest top_k of Inspect and Contrast")
    max_inspect_features: int = Field(64, ge=0, description="most named features in an Inspect")
    max_watched_features: int = Field(16, ge=0, description="most watched features in a Generate")
    max_contrast_texts: int = Field(256, ge=1, description="most texts in each Contrast set")
    max_search_results: int = Field(100, ge=1, description="largest limit of a search")
    max_query_chars: int = Field(1000, ge=1, description="most characters in a search query")
    max_sweep_prompts: int = Field(8, ge=1, description="most prompts in one Sweep")
    max_sweep_strengths: int = Field(12, ge=1, description="most strengths in one Sweep")
    max_rules_per_request: int = Field(16, ge=0, description="most rules in a Generate")
    max_edits_per_sae: int = Field(
        64, ge=1, description="most edits a request holds on one SAE, its rules' included"
    )
    prefill_tokens_per_step: int = Field(
        512,  # a long prompt holds running streams up by one 512-token chunk per step
        ge=1,
        description="prompt tokens an engine step may compute at a prompt's start, counted in "
        "cost: a long prompt's first chunk; deeper chunks hold fewer tokens at the same cost",
    )
    decode_shapes: Literal["auto", "batch", "context", "fixed"] = Field(
        "auto",
        description="the decode's shapes: batch (rows and keys of the batch), context (every "
        "slot's whole context read, so no row's attention depends on the others), fixed (also "
        "all max_active_rows rows); auto: context where the model computes in bfloat16 without "
        "CUDA graphs, batch otherwise (see DescribeModel's batch_invariance)",
    )
    # Serving.
    auth_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="accepted bearer token (repeatable; none: no authentication)",
        json_schema_extra=_flag("--auth-token"),
    )
    tls_cert: Path | None = Field(None, description="PEM certificate chain: serve TLS")
    tls_key: Path | None = Field(None, description="PEM private key of --tls-cert")
    tls_client_ca: Path | None = Field(
        None, description="require client certificates signed by this PEM CA (mutual TLS)"
    )
    grace_period_s: float = Field(
        30.0,
        ge=0,
        description="seconds to let calls finish on SIGTERM",
        json_schema_extra=_flag("--grace-period"),
    )
    max_message_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="largest gRPC message, in or out, and largest HTTP request body",
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ...")
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines as plain text or JSON Lines"
    )
    ready_file: Path | None = Field(
        None,
        description="once serving, write the ports here as JSON (removed on exit): what tools "
        "wait for instead of reading the log",
    )

    file_values: ClassVar[dict[str, Any]] = {}  # from the config file, below the environment

    @field_validator("sae", "vector", mode="before")
    @classmethod
    def _parse_sae(cls, value: Any) -> Any:
        items = _split(value)
        return [SaeSpec.parse(item) if isinstance(item, str) else item for item in items]

    @field_validator("labels", mode="before")
    @classmethod
    def _parse_labels(cls, value: Any) -> Any:
        items = _split(value)
        return [LabelSpec.parse(item) if isinstance(item, str) else item for item in items]

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
        return value.upper()

    @field_validator("auth_tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: Any) -> Any:
        return _split(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            InitSettingsSource(settings_cls, dict(cls.file_values)),
        )

    def limits(self) -> Limits:
        return Limits(
            max_prompt_tokens=self.max_prompt_tokens,
            max_new_tokens=self.max_new_tokens,
            default_max_new_tokens=min(self.default_max_new_tokens, self.max_new_tokens),
            max_edits_per_request=self.max_edits_per_request,
            max_abs_edit_value=self.max_abs_edit_value,
            max_active_rows=self.max_active_rows,
            max_queued_requests=self.max_queued_requests,
            max_stop_strings=self.max_stop_strings,
            max_stop_string_chars=self.max_stop_string_chars,
            max_top_k=self.max_top_k,
            max_inspect_features=self.max_inspect_features,
            max_watched_features=self.max_watched_features,
            max_contrast_texts=self.max_contrast_texts,
            max_search_results=self.max_search_results,
            max_rules_per_request=self.max_rules_per_request,
            max_edits_per_sae=self.max_edits_per_sae,
            max_query_chars=self.max_query_chars,
            max_sweep_prompts=self.max_sweep_prompts,
            max_sweep_strengths=self.max_sweep_strengths,
        )


def read_config_file(path: Path) -> dict[str, Any]:
    """Settings from a TOML or JSON file (keys as the settings' names, e.g. `metrics_port`)."""
    text = path.read_text()
    if path.suffix == ".json":
        values = json.loads(text)
    elif sys.version_info >= (3, 11):
        import tomllib

        values = tomllib.loads(text)
    else:
        raise ValueError(f"{path}: TOML settings need Python 3.11+; use a .json file")
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a table of settings")
    return values


def load_settings(cli: dict[str, Any], config_file: Path | None = None) -> Settings:
    """Settings from explicit flags over the environment over the config file."""
    loaded_file = read_config_file(config_file) if config_file else {}

    class _WithFile(Settings):
        file_values = loaded_file

    return _WithFile(**cli)
