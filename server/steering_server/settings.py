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


def _split(value: Any) -> Any:
    """Lists from the environment may be comma-separated: `a,b` as well as `["a", "b"]`."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            return json.loads(stripped)
        return [part.strip() for part in stripped.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STEERING_", extra="forbid")

    model: Path | None = None
    sae: Annotated[list[SaeSpec], NoDecode] = Field(default_factory=list)
    demo: bool = False
    host: str = "0.0.0.0"
    port: int = Field(50051, ge=0, le=65535)
    metrics_port: int = Field(9090, ge=0, le=65535)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # Limits of what one request may ask, and of the traffic the engine takes.
    max_active_rows: int = Field(16, ge=1)
    max_queued_requests: int = Field(64, ge=0)
    max_prompt_tokens: int = Field(4096, ge=1)
    max_new_tokens: int = Field(1024, ge=1)
    default_max_new_tokens: int = Field(64, ge=1)
    max_edits_per_request: int = Field(64, ge=0)
    max_abs_edit_value: float = Field(1e4, gt=0, le=1e6)
    max_stop_strings: int = Field(8, ge=0)
    max_stop_string_chars: int = Field(64, ge=1)
    prefill_tokens_per_step: int = Field(4096, ge=1)
    # Serving.
    auth_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: clients must present a certificate it signed
    grace_period_s: float = Field(30.0, ge=0)
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    log_level: str = "INFO"

    file_values: ClassVar[dict[str, Any]] = {}  # from the config file, below the environment

    @field_validator("sae", mode="before")
    @classmethod
    def _parse_sae(cls, value: Any) -> Any:
        items = _split(value)
        return [SaeSpec.parse(item) if isinstance(item, str) else item for item in items]

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
