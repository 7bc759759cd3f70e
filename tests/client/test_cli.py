"""The `steering-client` command against the fake server: arguments, streamed output, exit codes."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from steering_client.cli import main
from steering_client.edits import Edit
from steering_proto.v1 import steering_pb2 as pb
from tests.client.fake_server import FakeSteering


def test_generate_streams_text_and_reports_the_summary(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--target", target, "generate", "The sea is", "--edit", "res2:17=set:8"]
    argv += ["--edit", "res2:3=ablate@active", "--max-new-tokens", "5", "--temperature", "0.5"]
    argv += ["--top-k", "4", "--top-p", "0.5", "--seed", "99", "--stop", "\n", "--stop", "."]
    argv += ["--ignore-eos", "--request-id", "cli-1"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out == "Hello, world!\n"
    assert "finish_reason=length prompt_tokens=3 completion_tokens=4 seed=1234" in err
    (request,) = fake.requests
    assert isinstance(request, pb.GenerateRequest)
    assert request.prompt == "The sea is"
    expected = [Edit.set("res2", 17, 8.0), Edit.ablate("res2", 3, only_when_active=True)]
    assert list(request.edits) == [e.to_proto() for e in expected]
    s = request.sampling
    assert (s.max_new_tokens, s.temperature, s.top_k, s.top_p, s.seed) == (5, 0.5, 4, 0.5, 99)
    assert (list(s.stop), s.ignore_eos, request.request_id) == (["\n", "."], True, "cli-1")


def test_chat_role_sends_a_one_message_chat(fake: FakeSteering, target: str) -> None:
    assert main(["--target", target, "generate", "Hi there", "--chat-role", "user"]) == 0
    (request,) = fake.requests
    assert isinstance(request, pb.GenerateRequest)
    assert request.WhichOneof("input") == "chat"
    assert [(m.role, m.content) for m in request.chat.messages] == [("user", "Hi there")]


def test_target_and_token_come_from_the_environment(
    fake: FakeSteering, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEERING_TARGET", target)
    monkeypatch.setenv("STEERING_TOKEN", "envtok")
    fake.token = "envtok"
    assert main(["generate", "hi"]) == 0
    assert fake.metadata[0]["authorization"] == "Bearer envtok"


def test_describe_prints_model_saes_and_limits(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--target", target, "describe"]) == 0
    out = capsys.readouterr().out
    assert "model: tiny-gemma" in out
    assert "res2: layer 2, site resid_post, d_sae 256, d_model 64" in out
    assert "max_queued_requests     1000000" in out
    assert "max_abs_edit_value      10000" in out


def test_rpc_errors_exit_1_with_the_status(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.abort = (grpc.StatusCode.INVALID_ARGUMENT, "edits[0].feature: out of range")
    assert main(["--target", target, "generate", "hi", "--edit", "res2:999=set:1"]) == 1
    err = capsys.readouterr().err
    assert "error: INVALID_ARGUMENT: edits[0].feature: out of range" in err


def test_bad_edit_is_a_usage_error(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--target", target, "generate", "hi", "--edit", "res2:1=ablate:2"])
    assert caught.value.code == 2
    assert "ablate takes no value" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "steering_client", "generate", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0
    assert "--edit" in done.stdout and "SAE:FEATURE=MODE[:VALUE][@active]" in done.stdout


def test_out_of_range_option_is_a_usage_error(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--target", target, "generate", "hi", "--top-k", "-1"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "--top-k must be ≥ 0" in err
    assert "sampling.top_k" not in err  # the flag is named, not the protobuf field
    assert fake.requests == []
