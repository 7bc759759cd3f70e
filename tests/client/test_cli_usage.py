"""`steering-client` as a newcomer meets it: several edits in one --edit, a hint for a mistyped
@active, usage errors of one line plus a hint, and --wait for a server that is still loading."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from steering_client.cli import main
from steering_client.edits import Edit
from steering_proto.v1 import steering_pb2 as pb
from tests.client.fake_server import FakeSteering, serve


def usage_lines(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[str]:
    """Runs `argv`, which must exit 2, and returns the lines of stderr."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    return capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("command", ["generate", "inspect"])
def test_one_edit_flag_takes_comma_separated_edits(
    fake: FakeSteering, target: str, command: str
) -> None:
    argv = ["--target", target, command, "The sea", "--edit", "a:1=set:2,b:3=set:4"]
    assert main([*argv, "--edit", "res2:5=ablate@active"]) == 0
    (request,) = fake.requests
    assert isinstance(request, pb.GenerateRequest | pb.InspectRequest)
    expected = [
        Edit.set("a", 1, 2.0),
        Edit.set("b", 3, 4.0),
        Edit.ablate("res2", 5, only_when_active=True),
    ]
    assert list(request.edits) == [edit.to_proto() for edit in expected]


def test_an_edit_flag_sends_a_relative_value(fake: FakeSteering, target: str) -> None:
    assert main(["--target", target, "generate", "The sea", "--edit", "demo:632=set:1.5x"]) == 0
    (request,) = fake.requests
    assert isinstance(request, pb.GenerateRequest)
    assert list(request.edits) == [
        pb.FeatureEdit(sae="demo", feature=632, mode=pb.EDIT_MODE_SET, value=1.5, relative=True)
    ]


def test_edit_help_says_commas_separate_edits(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "repeatable, or comma-separated: res12:1=set:8,res12:9=ablate" in capsys.readouterr().out


def test_a_mistyped_active_suffix_gets_a_hint(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = usage_lines(
        capsys, ["--target", target, "generate", "hi", "--edit", "d:6=set:490@activ"]
    )
    assert "unknown suffix '@activ' (did you mean @active?)" in lines[0]
    assert fake.requests == []


@pytest.mark.parametrize(
    ("argv", "error", "hint"),
    [
        (
            ["generate"],
            "the following arguments are required: TEXT",
            "see 'steering-client generate --help'",
        ),
        (
            ["generate", "hi", "--edit", "a:1=boost:2"],
            "argument --edit: bad edit 'a:1=boost:2': unknown mode 'boost'",
            "see 'steering-client generate --help'",
        ),
        (
            ["generate", "hi", "--compare"],
            "--compare: nothing to compare: give --edit, --rule or --preset",
            "see 'steering-client generate --help'",
        ),
        (
            ["inspect", "hi", "--top-k", "-1"],
            "--top-k must be ≥ 0",
            "see 'steering-client inspect --help'",
        ),
        ([], "the following arguments are required: COMMAND", "see 'steering-client --help'"),
        (
            ["describ"],
            "argument COMMAND: invalid choice: 'describ'",
            "see 'steering-client --help'",
        ),
    ],
    ids=["missing-text", "bad-edit", "nothing-to-compare", "bad-number", "no-command", "typo"],
)
def test_a_usage_error_is_one_line_and_a_hint(
    fake: FakeSteering,
    target: str,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    error: str,
    hint: str,
) -> None:
    lines = usage_lines(capsys, [*argv, "--target", target] if argv else argv)
    assert len(lines) == 2, lines
    assert lines[0].startswith("steering-client: error: ")
    assert error in lines[0]
    assert lines[1] == f"hint: {hint}"
    assert fake.requests == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def late_target(fake: FakeSteering) -> Iterator[str]:
    """A target whose fake server starts about a second after the test does."""
    port = free_port()
    done = threading.Event()

    def start_later() -> None:
        time.sleep(1.0)
        with serve(fake, port=port):
            done.wait(30)

    thread = threading.Thread(target=start_later)
    thread.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        done.set()
        thread.join()


def test_wait_waits_for_a_server_that_is_not_up_yet(
    late_target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--target", late_target, "--wait", "10", "describe"]) == 0
    assert "model: tiny-gemma" in capsys.readouterr().out


def test_wait_waits_while_the_server_loads(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.loading_calls = 3  # answered UNAVAILABLE, as a server loading its model does
    assert main(["--target", target, "generate", "hi", "--wait", "10"]) == 0
    assert capsys.readouterr().out == "Hello, world!\n"
    generated = [r for r in fake.requests if isinstance(r, pb.GenerateRequest)]
    assert len(generated) == 1
    assert fake.loading_calls == 0


def test_without_wait_a_loading_server_fails_at_once(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.loading_calls = 1
    assert main(["--target", target, "describe"]) == 1
    assert "error: UNAVAILABLE: the model is still loading" in capsys.readouterr().err


def test_wait_gives_up_when_the_time_is_up(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.loading_calls = 10**9
    assert main(["--target", target, "--wait", "0.5", "describe"]) == 1
    err = capsys.readouterr().err
    assert "error: UNAVAILABLE: not serving after waiting 0.5 s: the model is still loading" in err


def test_wait_does_not_retry_other_errors(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.token = "right"
    assert main(["--target", target, "--token", "wrong", "--wait", "30", "describe"]) == 1
    assert "error: UNAUTHENTICATED: missing or wrong bearer token" in capsys.readouterr().err
    assert len(fake.requests) == 1


@pytest.mark.parametrize(("value", "rule"), [("-1", "≥ 0"), ("nan", "≥ 0"), ("soon", "a number")])
def test_a_bad_wait_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], value: str, rule: str
) -> None:
    lines = usage_lines(capsys, ["--wait", value, "describe"])
    assert "--wait must be" in lines[0] and rule in lines[0]
