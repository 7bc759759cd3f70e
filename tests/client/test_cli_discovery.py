"""`steering-client inspect`, `search`, `contrast` and `generate --watch` against the fake server:
the requests they send, the lines they print, and their usage errors."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from steering_client.cli import main
from steering_client.edits import Edit
from steering_proto.v1 import steering_pb2 as pb
from tests.client.fake_server import FakeSteering

# What the CLI says under the watched table when the request also edits a watched feature.
WATCH_NOTE = (
    "note: {} is also edited by this request; a watched value is read before the feature's "
    "own edit (what the model computed there, not the value the edit wrote), so it may stay "
    "near 0 while the edit acts; the receipts say where the edit applied"
)


def usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Runs `argv`, which must exit 2, and returns the error line of stderr (before the hint)."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    return capsys.readouterr().err.splitlines()[0]


def test_inspect_sends_the_request_and_prints_a_line_per_token(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--target", target, "inspect", "The sea", "--sae", "res2", "--sae", "res3"]
    argv += ["--top-k", "3", "--feature", "res2:7", "--feature", "a:b:9", "--edit", "res2:3=set:2"]
    assert main(argv) == 0
    (request,) = fake.requests
    assert isinstance(request, pb.InspectRequest)
    assert request.prompt == "The sea"
    assert (list(request.saes), request.top_k) == (["res2", "res3"], 3)
    assert [(f.sae, f.feature) for f in request.features] == [("res2", 7), ("a:b", 9)]
    assert list(request.edits) == [Edit.set("res2", 3, 2.0).to_proto()]
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "   0  '<bos>'   special  | res2:7=0",
        "   1  'The'              res2:12 3.5 (articles), res2:7 1.25  | res2:7=1.25",
        "   2  ' sea\\n'           res2:7 8.5 (the sea)  | res2:7=8.5",
    ]


def test_inspect_no_top_sends_no_top(fake: FakeSteering, target: str) -> None:
    assert main(["--target", target, "inspect", "The sea", "--no-top", "--feature", "res2:7"]) == 0
    (request,) = fake.requests
    assert isinstance(request, pb.InspectRequest)
    assert request.no_top and request.top_k == 0


def test_inspect_reads_stdin_and_sends_a_chat(
    fake: FakeSteering, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin\n"))
    assert main(["--target", target, "inspect", "-", "--chat-role", "user"]) == 0
    (request,) = fake.requests
    assert isinstance(request, pb.InspectRequest)
    assert [(m.role, m.content) for m in request.chat.messages] == [("user", "from stdin\n")]
    assert (list(request.saes), request.top_k, len(request.features)) == ([], 0, 0)


def test_inspect_without_named_features_prints_no_bar(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.inspected = pb.InspectResponse(
        tokens=[
            pb.InspectedToken(
                token_id=5,
                text="\t",
                top=[pb.FeatureActivation(sae="s", feature=1, activation=0.5)],
            )
        ]
    )
    assert main(["--target", target, "inspect", "x"]) == 0
    assert capsys.readouterr().out == "   0  '\\t'           s:1 0.5\n"


def test_search_prints_score_feature_and_label(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--target", target, "search", "the sea", "--sae", "res2", "--limit", "5"]) == 0
    assert fake.requests == [pb.SearchFeaturesRequest(query="the sea", sae="res2", limit=5)]
    assert capsys.readouterr().out.splitlines() == [
        "   2.500  res2:7    the sea  (typical max 12.5, fires at 12.5% of tokens)",
        "   1.250  res2:130  sea creatures",  # neither known: nothing shown
    ]


def test_search_by_activation_sends_by_and_marks_what_the_model_read(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.matches = pb.SearchFeaturesResponse(
        matches=[
            pb.FeatureMatch(sae="res2", feature=7, label="the sea", score=2.5, found_by="labels"),
            pb.FeatureMatch(sae="res2", feature=9, label="waves", score=0.5, found_by="activation"),
        ]
    )
    assert main(["--target", target, "search", "ocean", "--by", "both"]) == 0
    assert fake.requests == [pb.SearchFeaturesRequest(query="ocean", by=pb.SEARCH_BY_BOTH)]
    assert capsys.readouterr().out.splitlines() == [
        "   2.500  res2:7  the sea",
        "   0.500  res2:9  waves  [by activation]",
    ]


def test_search_without_matches_says_so_on_stderr(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.matches = pb.SearchFeaturesResponse()
    assert main(["--target", target, "search", "zebra"]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("", "no matches\n")


def test_contrast_reads_both_files_and_prints_two_sections(
    fake: FakeSteering, target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("waves crash\n\n   \n the tide\r\n", encoding="utf-8")
    b.write_text("dry sand\n", encoding="utf-8")
    argv = ["--target", target, "contrast", "--a", str(a), "--b", str(b)]
    assert main([*argv, "--sae", "res2", "--top-k", "2"]) == 0
    assert fake.requests == [
        pb.ContrastRequest(a=["waves crash", " the tide"], b=["dry sand"], sae="res2", top_k=2)
    ]
    assert capsys.readouterr().out.splitlines() == [
        "toward a:",
        "  res2:7         4.5       0.25  the sea",
        "  res2:40        1.5        0.5",
        "toward b:",
        "  res2:99          0       2.75  deserts",
    ]


def test_contrast_with_nothing_one_way_says_none(
    fake: FakeSteering, target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.contrasted = pb.ContrastResponse()
    (tmp_path / "t").write_text("x\n")
    assert (
        main(
            ["--target", target, "contrast", "--a", str(tmp_path / "t"), "--b", str(tmp_path / "t")]
        )
        == 0
    )
    assert capsys.readouterr().out == "toward a:\n  (none)\ntoward b:\n  (none)\n"


def test_contrast_missing_file_is_a_usage_error_naming_the_flag(
    fake: FakeSteering, target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "b").write_text("x\n")
    missing = tmp_path / "nope.txt"
    argv = ["--target", target, "contrast", "--a", str(missing), "--b", str(tmp_path / "b")]
    line = usage_error(capsys, argv)
    assert line.endswith(f"error: --a: [Errno 2] No such file or directory: '{missing}'")
    assert fake.requests == []


def test_contrast_file_of_blank_lines_is_a_usage_error(
    fake: FakeSteering, target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a").write_text("x\n")
    (tmp_path / "b").write_text("\n  \n")
    argv = ["--target", target, "contrast", "--a", str(tmp_path / "a"), "--b", str(tmp_path / "b")]
    assert "error: --b: " in usage_error(capsys, argv)
    assert fake.requests == []


def test_contrast_needs_both_sets(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "b").write_text("x\n")
    line = usage_error(capsys, ["--target", target, "contrast", "--b", str(tmp_path / "b")])
    assert "the following arguments are required: --a" in line


def test_generate_watch_prints_a_table_then_receipts_then_the_summary(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--target", target, "generate", "hi", "--watch", "res2:7", "--watch", "res2:130"]
    argv += ["--edit", "res2:7=set:15", "--edit", "res2:3=ablate@active"]
    assert main(argv) == 0
    (request,) = fake.requests
    assert isinstance(request, pb.GenerateRequest)
    assert [(w.sae, w.feature) for w in request.watch] == [("res2", 7), ("res2", 130)]
    out, err = capsys.readouterr()
    assert out == "Hello, world!\n"
    assert err.splitlines() == [
        "#  id  text       res2:7  res2:130",
        "0  10  'Hello'     10.25      10.5",
        "1  11              11.25      11.5",
        "2  12  ', world'   12.25      12.5",
        "3  13  '!'         13.25      13.5",
        WATCH_NOTE.format("res2:7"),
        "res2:7=set:15 applied at 40 positions, active at 0",
        "res2:3=ablate@active applied at 41 positions, active at 1",
        "finish_reason=length prompt_tokens=3 completion_tokens=4 seed=1234",
    ]


def test_generate_without_watch_or_edits_prints_only_the_summary(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--target", target, "generate", "hi"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "finish_reason=length prompt_tokens=3 completion_tokens=4 seed=1234"
    ]


def test_describe_shows_label_counts_and_new_limits(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--target", target, "describe"]) == 0
    out = capsys.readouterr().out
    assert "res2: layer 2, site resid_post, d_sae 256, d_model 64, labels 200" in out
    for line in ("max_top_k               64", "max_watched_features    8"):
        assert line in out


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["generate", "hi", "--watch", "res2"], "--watch"),
        (["generate", "hi", "--watch", "res2:x"], "--watch"),
        (["generate", "hi", "--watch", "res2:7=set:1"], "--watch"),
        (["inspect", "hi", "--feature", "res2:-1"], "--feature"),
        (["inspect", "hi", "--feature", ":4"], "--feature"),
    ],
)
def test_bad_feature_syntax_is_a_usage_error_naming_the_flag(
    fake: FakeSteering,
    target: str,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    flag: str,
) -> None:
    line = usage_error(capsys, ["--target", target, *argv])
    assert f"argument {flag}: bad feature {argv[-1]!r}" in line
    assert fake.requests == []
