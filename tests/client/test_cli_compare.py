"""`steering-client generate --rule/--preset/--compare` and `describe`'s kinds, hashes and
presets, against the fake server."""

from __future__ import annotations

import os
import shutil

import pytest

from steering_client.cli import main
from steering_client.edits import Edit
from steering_client.rules import Rule
from steering_proto.v1 import steering_pb2 as pb
from tests.client.fake_server import RES2_SHA256, VEC_SHA256, FakeSteering
from tests.client.test_cli_discovery import WATCH_NOTE

STEERED = (
    pb.GenerateResponse(
        token_ids=[20],
        text="The sea lies calm under a pale sky, its waves folding softly onto the sand",
    ),
    pb.GenerateResponse(
        token_ids=[21, 22],
        text=" while gulls drift overhead.\n\nNothing stirs.",
        finish_reason=pb.FINISH_REASON_EOS,
        usage=pb.Usage(prompt_tokens=3, completion_tokens=3),
        seed=1234,
    ),
)
COMPARE = ["generate", "The sea", "--compare", "--preset", "calm", "--rule", "res2:5>1 -> stop"]


def usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Runs `argv`, which must exit 2, and returns the error line of stderr (before the hint)."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    return capsys.readouterr().err.splitlines()[0]


def generate_requests(fake: FakeSteering) -> list[pb.GenerateRequest]:
    requests = [r for r in fake.requests if isinstance(r, pb.GenerateRequest)]
    assert len(requests) == len(fake.requests)
    return requests


def test_rule_and_preset_are_sent(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--target", target, "generate", "The sea", "--preset", "calm"]
    argv += ["--rule", "res2:5>-1.5 -> stop", "--rule", "a:b:6>2->res2:9=set:4, res2:10=ablate"]
    assert main(argv) == 0
    (request,) = generate_requests(fake)
    assert request.preset == "calm"
    expected = [
        Rule.stop_when("res2", 5, -1.5),
        Rule.apply_when("a:b", 6, 2.0, Edit.set("res2", 9, 4.0), Edit.ablate("res2", 10)),
    ]
    assert list(request.rules) == [rule.to_proto() for rule in expected]
    out, err = capsys.readouterr()
    assert out == "Hello, world!\n"
    assert err.splitlines() == [  # receipts: the preset's edits, then the rule's
        "res2:7=set:8 applied at 40 positions, active at 0",
        "res2:3=ablate@active applied at 41 positions, active at 1",
        "res2:9=set:4 applied at 42 positions, active at 2",
        "res2:10=ablate applied at 43 positions, active at 3",
        "finish_reason=length prompt_tokens=3 completion_tokens=4 seed=1234",
    ]


def test_a_stop_rule_that_fires_reports_condition(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.stop_rule_fires_after = 1
    assert main(["--target", target, "generate", "hi", "--rule", "res2:5>0.5 -> stop"]) == 0
    out, err = capsys.readouterr()
    assert out == "Hello\n"
    assert err.splitlines() == [
        "finish_reason=condition prompt_tokens=3 completion_tokens=2 seed=1234"
    ]


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ("res2:5>1", "no '->'"),
        ("res2:5>inf -> stop", "threshold must be finite"),
        ("res2:5>1 -> stop, res2:9=set:1", "give one action"),
        ("res2:5>1 -> res2:9=boost:1", "unknown mode 'boost'"),
    ],
)
def test_a_bad_rule_is_a_usage_error_naming_the_flag(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str], rule: str, why: str
) -> None:
    line = usage_error(capsys, ["--target", target, "generate", "hi", "--rule", rule])
    assert f"argument --rule: bad rule {rule!r}: " in line
    assert why in line
    assert fake.requests == []


def test_compare_side_by_side_on_a_wide_terminal(
    fake: FakeSteering,
    target: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.steered_chunks = STEERED
    monkeypatch.setattr(shutil, "get_terminal_size", lambda: os.terminal_size((120, 40)))
    assert main(["--target", target, *COMPARE]) == 0
    out, err = capsys.readouterr()
    bar = "-" * 58
    assert out.splitlines() == [
        f"{'unsteered':<58} | steered",
        f"{bar} | {bar}",
        f"{'Hello, world!':<58} | The sea lies calm under a pale sky, its waves folding",
        f"{'':<58} | softly onto the sand while gulls drift overhead.",
        f"{'':<58} |",
        f"{'':<58} | Nothing stirs.",
    ]
    assert max(len(line) for line in out.splitlines()) <= 120
    assert err.splitlines() == [
        "res2:7=set:8 applied at 40 positions, active at 0",
        "res2:3=ablate@active applied at 41 positions, active at 1",
        "unsteered: finish_reason=length prompt_tokens=3 completion_tokens=4",
        "steered: finish_reason=eos prompt_tokens=3 completion_tokens=3",
        "greedy: no seed (temperature 0)",
    ]


def test_compare_interleaves_labelled_lines_on_a_narrow_terminal(
    fake: FakeSteering,
    target: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.steered_chunks = STEERED
    monkeypatch.setenv("COLUMNS", "80")  # what shutil.get_terminal_size reads first
    assert main(["--target", target, *COMPARE]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "unsteered: Hello, world!",
        "  steered: The sea lies calm under a pale sky, its waves folding softly onto the",
        "  steered: sand while gulls drift overhead.",
        "  steered:",
        "  steered: Nothing stirs.",
    ]
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "steered: finish_reason=eos" in err


def test_compare_alternates_the_runs_line_by_line(
    fake: FakeSteering,
    target: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.chunks = (
        pb.GenerateResponse(
            token_ids=[1], text="one\ntwo\nthree", finish_reason=pb.FINISH_REASON_LENGTH
        ),
    )
    fake.steered_chunks = (
        pb.GenerateResponse(token_ids=[2], text="uno\ndos", finish_reason=pb.FINISH_REASON_EOS),
    )
    monkeypatch.setenv("COLUMNS", "99")  # one short of side by side
    assert main(["--target", target, *COMPARE]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "unsteered: one",
        "  steered: uno",
        "unsteered: two",
        "  steered: dos",
        "unsteered: three",
    ]


def test_compare_sends_the_same_request_twice_with_one_seed(
    fake: FakeSteering,
    target: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "100")  # just wide enough for side by side
    argv = ["--target", target, *COMPARE, "--edit", "res2:4=add:1", "--watch", "res2:7"]
    assert main([*argv, "--temperature", "0.7", "--max-new-tokens", "9"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{'unsteered':<48} | steered"
    requests = generate_requests(fake)
    assert len(requests) == 2
    unsteered, steered = sorted(requests, key=lambda r: r.preset)
    assert (unsteered.preset, steered.preset) == ("", "calm")
    assert (len(unsteered.edits), len(unsteered.rules)) == (0, 0)
    assert list(steered.edits) == [Edit.add("res2", 4, 1.0).to_proto()]
    assert list(steered.rules) == [Rule.stop_when("res2", 5, 1.0).to_proto()]
    assert unsteered.sampling == steered.sampling
    assert unsteered.sampling.HasField("seed")  # picked by the client, shared
    assert unsteered.watch == steered.watch
    assert unsteered.prompt == steered.prompt == "The sea"


def test_compare_reports_one_seed_for_a_sampled_pair(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.steered_chunks = STEERED
    assert main(["--target", target, *COMPARE, "--temperature", "0.7"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[-3:] == [
        "unsteered: finish_reason=length prompt_tokens=3 completion_tokens=4",
        "steered: finish_reason=eos prompt_tokens=3 completion_tokens=3",
        "seed=1234 (both runs)",
    ]


def test_compare_reports_no_seed_for_a_greedy_pair(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--target", target, *COMPARE, "--seed", "5"]) == 0
    err = capsys.readouterr().err
    assert "seed" not in err.replace("no seed", "")
    assert err.splitlines()[-1] == "greedy: no seed (temperature 0)"


def test_compare_with_watch_prints_a_table_per_run(
    fake: FakeSteering,
    target: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.steered_chunks = STEERED
    monkeypatch.setenv("COLUMNS", "120")
    assert main(["--target", target, *COMPARE, "--watch", "res2:7"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[:13] == [
        "unsteered:",
        "#  id  res2:7",
        "0  10   10.25",
        "1  11   11.25",
        "2  12   12.25",
        "3  13   13.25",
        "steered:",
        "#  id  res2:7",
        "0  20   20.25",
        "1  21   21.25",
        "2  22   22.25",
        WATCH_NOTE.format("res2:7"),
        "res2:7=set:8 applied at 40 positions, active at 0",
    ]


@pytest.mark.parametrize(
    "extra",
    [[], ["--watch", "res2:7"], ["--preset", ""]],
    ids=["bare", "watch-only", "empty-preset"],
)
def test_compare_without_steering_is_a_usage_error(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    line = usage_error(capsys, ["--target", target, "generate", "hi", "--compare", *extra])
    assert "error: --compare: nothing to compare" in line
    assert fake.requests == []


def test_describe_shows_kind_sha256_and_presets(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--target", target, "describe"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert (
        "  res2: layer 2, site resid_post, d_sae 256, d_model 64, labels 200, "
        f"kind jumprelu, sha256 {RES2_SHA256}"  # whole, as a preset's pin must give it
    ) in lines
    assert (
        "  vec: layer 3, site resid_post, d_sae 4, d_model 64, labels 0, "
        f"kind vector, sha256 {VEC_SHA256}"
    ) in lines
    start = lines.index("presets:")
    assert lines[start : start + 6] == [
        "presets:",
        "  calm: calm sea",
        "    res2:7=set:8",
        "    res2:3=ablate@active",
        "  bare:",
        "    vec:1=add:0",
    ]
    assert "  max_rules_per_request   8" in lines


def test_describe_without_presets_says_none(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.description = pb.DescribeModelResponse(
        saes=[pb.SaeInfo(name="old", layer=1, d_sae=8, d_model=4, site="resid_post")]
    )
    assert main(["--target", target, "describe"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  old: layer 1, site resid_post, d_sae 8, d_model 4, labels 0" in lines  # no kind
    assert "presets: none" in lines


def test_generate_help_lists_rule_preset_and_compare(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # argparse wraps help to the terminal's width
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    for text in ("--rule RULE", "SAE:FEATURE>ABOVE -> stop", "--preset NAME", "--compare"):
        assert text in out
