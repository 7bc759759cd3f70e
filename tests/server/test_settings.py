"""Settings: NAME=PATH@LAYER parsing and the precedence flags > environment > config file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from steering_server.cli import settings_from
from steering_server.settings import SaeSpec, load_settings


@pytest.mark.parametrize(
    ("text", "name", "path", "layer"),
    [
        (
            "res12=/m/layer_12/width_16k/average_l0_82@12",
            "res12",
            "/m/layer_12/width_16k/average_l0_82",
            12,
        ),
        ("a=dir@with@signs@3", "a", "dir@with@signs", 3),
        ("x=params.npz@0", "x", "params.npz", 0),
    ],
)
def test_sae_spec_parses(text: str, name: str, path: str, layer: int) -> None:
    assert SaeSpec.parse(text) == SaeSpec(name=name, path=Path(path), layer=layer)


@pytest.mark.parametrize("text", ["res12", "=p@1", "a=@1", "a=p", "a=p@", "a=p@x", "a=p@-1"])
def test_bad_sae_spec_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="NAME=PATH@LAYER"):
        SaeSpec.parse(text)


def test_flags_beat_environment_beat_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "settings.json"
    config.write_text(
        json.dumps({"port": 1111, "metrics_port": 2222, "max_active_rows": 3, "host": "::1"})
    )
    monkeypatch.setenv("STEERING_PORT", "3333")
    monkeypatch.setenv("STEERING_METRICS_PORT", "4444")
    s = settings_from(["--config", str(config), "--port", "5555"])
    assert (s.port, s.metrics_port, s.max_active_rows, s.host) == (5555, 4444, 3, "::1")


def test_config_file_from_the_environment_and_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "settings.toml"
    config.write_text('sae = ["a=/x@1"]\nauth_tokens = ["t"]\n')
    monkeypatch.setenv("STEERING_CONFIG", str(config))
    s = settings_from([])
    assert s.sae == [SaeSpec(name="a", path=Path("/x"), layer=1)] and s.auth_tokens == ["t"]


def test_lists_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEERING_SAE", "a=/x@1, b=/y@2")
    monkeypatch.setenv("STEERING_AUTH_TOKENS", '["one", "two"]')
    s = load_settings({})
    assert [x.name for x in s.sae] == ["a", "b"] and s.auth_tokens == ["one", "two"]


def test_repeated_flags_and_limits() -> None:
    s = settings_from(
        ["--sae", "a=/x@1", "--sae", "b=/y@2", "--max-new-tokens", "32", "--auth-token", "k"]
    )
    assert [x.layer for x in s.sae] == [1, 2] and s.auth_tokens == ["k"]
    limits = s.limits()
    assert limits.max_new_tokens == 32 and limits.default_max_new_tokens == 32  # clipped to the max


@pytest.mark.parametrize(
    "argv",
    [["--port", "70000"], ["--device", "tpu"], ["--max-active-rows", "0"], ["--sae", "nonsense"]],
)
def test_bad_values_are_refused(argv: list[str]) -> None:
    with pytest.raises((ValidationError, SystemExit)):
        settings_from(argv)


def test_unknown_keys_in_the_config_file_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"prot": 1}))
    with pytest.raises(ValidationError, match="prot"):
        load_settings({}, config)
