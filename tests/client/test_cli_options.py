"""`steering-client` options: the connection options on either side of the subcommand, and bad
numbers refused as usage errors that name their flag."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from steering_client import cli
from steering_client.cli import main
from steering_client.client import SteeringClient
from tests.client.fake_server import FakeSteering

NOWHERE = "127.0.0.1:1"  # nothing listens there: a call that reaches the fake used the flag
COMMANDS = [
    pytest.param(["generate", "hi"], id="generate"),
    pytest.param(["describe"], id="describe"),
    pytest.param(["inspect", "hi"], id="inspect"),
    pytest.param(["search", "sea"], id="search"),
    pytest.param(["contrast", "--a", __file__, "--b", __file__], id="contrast"),
]


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The arguments of each SteeringClient the CLI opens; the environment points nowhere."""
    monkeypatch.setenv("STEERING_TARGET", NOWHERE)
    monkeypatch.delenv("STEERING_TOKEN", raising=False)
    calls: list[dict[str, Any]] = []

    class Recording(SteeringClient):
        def __init__(self, target: str, **kwargs: Any) -> None:
            calls.append({"target": target, **kwargs})
            super().__init__(target, **kwargs)

    monkeypatch.setattr(cli, "SteeringClient", Recording)
    return calls


@pytest.mark.parametrize("command", COMMANDS)
def test_connection_options_after_the_command_reach_the_server(
    fake: FakeSteering, target: str, opened: list[dict[str, Any]], command: list[str]
) -> None:
    fake.token = "tok"
    assert main([*command, "--target", target, "--token", "tok", "--timeout", "5"]) == 0
    assert fake.metadata[0]["authorization"] == "Bearer tok"
    assert (opened[0]["target"], opened[0]["timeout"]) == (target, 5.0)


@pytest.mark.parametrize("command", COMMANDS)
def test_connection_options_before_the_command_are_kept(
    fake: FakeSteering, target: str, opened: list[dict[str, Any]], command: list[str]
) -> None:
    fake.token = "tok"
    assert main(["--target", target, "--token", "tok", "--timeout", "5", *command]) == 0
    assert fake.metadata[0]["authorization"] == "Bearer tok"
    assert (opened[0]["target"], opened[0]["timeout"]) == (target, 5.0)


@pytest.mark.parametrize("command", COMMANDS)
def test_an_option_after_the_command_wins_over_one_before(
    fake: FakeSteering, target: str, opened: list[dict[str, Any]], command: list[str]
) -> None:
    fake.token = "after"
    before = ["--target", NOWHERE, "--token", "before", "--timeout", "1"]
    after = ["--target", target, "--token", "after", "--timeout", "7"]
    assert main([*before, *command, *after]) == 0
    assert fake.metadata[0]["authorization"] == "Bearer after"
    assert (opened[0]["target"], opened[0]["timeout"]) == (target, 7.0)


def test_without_options_the_environment_and_defaults_hold(
    fake: FakeSteering, target: str, opened: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEERING_TARGET", target)
    monkeypatch.setenv("STEERING_TOKEN", "envtok")
    assert main(["describe"]) == 0
    assert fake.metadata[0]["authorization"] == "Bearer envtok"
    (call,) = opened
    assert call == {
        "target": target,
        "token": "envtok",
        "root_certificates": None,
        "tls": False,
        "timeout": None,
        "options": (),  # no channel arguments without --wait
    }


def test_describe_takes_a_timeout_after_it(
    target: str, opened: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["describe", "--timeout", "3", "--target", target]) == 0
    assert "model: tiny-gemma" in capsys.readouterr().out
    assert opened[0]["timeout"] == 3.0


def test_a_timeout_after_generate_bounds_the_call(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.hang_after = 1
    assert main(["generate", "hi", "--target", target, "--timeout", "0.3"]) == 1
    assert "error: DEADLINE_EXCEEDED" in capsys.readouterr().err


def test_tls_after_the_command_is_used(target: str, opened: list[dict[str, Any]]) -> None:
    # The fake speaks plaintext, so a TLS call fails: what matters is that TLS was asked for.
    assert main(["describe", "--target", target, "--tls", "--timeout", "5"]) == 1
    assert opened[0]["tls"] is True


def test_ca_cert_after_the_command_is_read(
    tmp_path: Path, opened: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(SystemExit) as caught:
        main(["describe", "--ca-cert", str(missing)])
    assert caught.value.code == 2
    assert f"--ca-cert: [Errno 2] No such file or directory: '{missing}'" in capsys.readouterr().err
    assert opened == []


@pytest.mark.parametrize(
    "command",
    [[], ["generate"], ["describe"], ["inspect"], ["search"], ["contrast"]],
    ids=["top", "generate", "describe", "inspect", "search", "contrast"],
)
def test_help_lists_the_connection_options(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*command, "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert "connection options (before or after the command)" in out
    for flag in ("--target", "--token", "--tls", "--ca-cert FILE", "--timeout S", "--wait S"):
        assert flag in out
    assert "SUPPRESS" not in out


BAD_NUMBERS = [
    (["generate", "hi", "--max-new-tokens", "-1"], "--max-new-tokens must be ≥ 0"),
    (["generate", "hi", "--max-new-tokens", str(2**32)], "--max-new-tokens must be ≤ 4294967295"),
    (
        ["generate", "hi", "--max-new-tokens", "abc"],
        "--max-new-tokens must be an integer, not 'abc'",
    ),
    (["generate", "hi", "--top-k", "-1"], "--top-k must be ≥ 0"),
    (["generate", "hi", "--top-k", "2.5"], "--top-k must be an integer, not '2.5'"),
    (["generate", "hi", "--seed", "-1"], "--seed must be between 0 and 18446744073709551615"),
    (["generate", "hi", "--seed", str(2**64)], "--seed must be between 0 and 18446744073709551615"),
    (["generate", "hi", "--temperature", "-0.5"], "--temperature must be a finite number ≥ 0"),
    (["generate", "hi", "--temperature", "inf"], "--temperature must be a finite number ≥ 0"),
    (["generate", "hi", "--temperature", "nan"], "--temperature must be a finite number ≥ 0"),
    (["generate", "hi", "--temperature", "hot"], "--temperature must be a number, not 'hot'"),
    (["generate", "hi", "--top-p", "1.5"], "--top-p must be between 0 and 1"),
    (["generate", "hi", "--top-p", "-0.1"], "--top-p must be between 0 and 1"),
    (["generate", "hi", "--top-p", "nan"], "--top-p must be between 0 and 1"),
    (["generate", "hi", "--timeout", "0"], "--timeout must be > 0"),
    (["describe", "--timeout", "-3"], "--timeout must be > 0"),
    (["--timeout", "nan", "describe"], "--timeout must be > 0"),
    (["--timeout", "1e12", "describe"], "--timeout must be ≤ 1000000000"),
    (["describe", "--timeout", "soon"], "--timeout must be a number, not 'soon'"),
    (["inspect", "hi", "--top-k", "-1"], "--top-k must be ≥ 0"),
    (["inspect", "hi", "--top-k", str(2**32)], "--top-k must be ≤ 4294967295"),
    (["search", "sea", "--limit", "-1"], "--limit must be ≥ 0"),
    (["search", "sea", "--limit", "ten"], "--limit must be an integer, not 'ten'"),
    (["contrast", "--a", __file__, "--b", __file__, "--top-k", "-1"], "--top-k must be ≥ 0"),
    (["inspect", "hi", "--timeout", "0"], "--timeout must be > 0"),
]


@pytest.mark.parametrize(
    ("argv", "message"), BAD_NUMBERS, ids=[" ".join(argv) for argv, _ in BAD_NUMBERS]
)
def test_a_bad_number_is_a_usage_error_naming_its_flag(
    fake: FakeSteering,
    target: str,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*argv, "--target", target])
    assert caught.value.code == 2
    error_line = capsys.readouterr().err.splitlines()[0]
    assert error_line.endswith(f": error: {message}")  # said once, not after "argument --x: "
    assert fake.requests == []


@pytest.mark.parametrize(
    "argv",
    [
        [
            "--max-new-tokens",
            "0",
            "--top-k",
            "0",
            "--seed",
            "0",
            "--temperature",
            "0",
            "--top-p",
            "0",
        ],
        ["--max-new-tokens", "4294967295", "--top-k", "4294967295", "--seed", str(2**64 - 1)],
        ["--temperature", "100", "--top-p", "1", "--timeout", "1000000000"],
    ],
    ids=["lows", "uint-highs", "float-highs"],
)
def test_numbers_at_the_bounds_are_sent(fake: FakeSteering, target: str, argv: list[str]) -> None:
    assert main(["--target", target, "generate", "hi", *argv]) == 0
    assert len(fake.requests) == 1
