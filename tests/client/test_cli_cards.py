"""`steering-client feature` and the client's `describe_feature` against the fake server, and the
note `generate --watch` prints for a watched feature the request also edits."""

from __future__ import annotations

import asyncio

import pytest

from steering_client import AsyncSteeringClient, FeatureCard, FeatureRef, SteeringClient
from steering_client.cli import main
from steering_proto.v1 import steering_pb2 as pb
from tests.client.fake_server import FakeSteering
from tests.client.test_cli_discovery import WATCH_NOTE, usage_error


def test_feature_sends_the_request_and_prints_the_card(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--target", target, "feature", "a:b:7", "--top-tokens", "2"]) == 0
    (request,) = fake.requests
    assert isinstance(request, pb.DescribeFeatureRequest)
    assert (request.sae, request.feature, request.top_tokens) == ("a:b", 7, 2)
    assert capsys.readouterr().out.splitlines() == [
        "res2:7  the sea",
        "  typical max 12.5, fires at 12.5% of tokens",
        "top contexts:",
        "  'by the [[sea]] at dawn'",
        "  'a [[sea]]\\nbreeze'",
        "promoted (W_dec · W_U):",
        "   0.5  ' sea'    id 9001",
        "  0.25  ' ocean'  id 12",
        "suppressed (W_dec · W_U):",
        "  -0.75  ' desert'  id 40",
    ]


def test_feature_without_what_the_label_file_holds_says_so(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.card = pb.FeatureCard(sae="v", feature=0)
    assert main(["--target", target, "feature", "v:0"]) == 0
    assert fake.requests[0].top_tokens == 0  # type: ignore[attr-defined]
    assert capsys.readouterr().out.splitlines() == [
        "v:0  (no label)",
        "  typical max and frequency unknown",
        "promoted (W_dec · W_U):",
        "  (none)",
        "suppressed (W_dec · W_U):",
        "  (none)",
    ]


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["feature", "res2"], "feature"),
        (["feature", "res2:7", "--top-tokens", "-1"], "--top-tokens"),
    ],
)
def test_feature_usage_errors_name_the_argument(
    target: str, capsys: pytest.CaptureFixture[str], argv: list[str], flag: str
) -> None:
    assert flag in usage_error(capsys, ["--target", target, *argv])


def test_describe_feature_sync_and_async(fake: FakeSteering, target: str) -> None:
    with SteeringClient(target) as client:
        card = client.describe_feature("res2:7", top_tokens=3)
        assert client.describe_feature(("res2", 7)) == card
        assert client.describe_feature(FeatureRef("res2", 7)) == card

    async def run() -> FeatureCard:
        async with AsyncSteeringClient(target) as client:
            return await client.describe_feature("res2:7", top_tokens=3)

    assert asyncio.run(run()) == card
    assert card.top_contexts == ("by the [[sea]] at dawn", "a [[sea]]\nbreeze")
    assert [(t.token_id, t.text, t.weight) for t in card.promoted] == [
        (9001, " sea", 0.5),
        (12, " ocean", 0.25),
    ]
    assert [(t.token_id, t.weight) for t in card.suppressed] == [(40, -0.75)]
    assert (card.label, card.typical_max, card.frequency) == ("the sea", 12.5, 0.125)
    sent = [r for r in fake.requests if isinstance(r, pb.DescribeFeatureRequest)]
    assert [(r.sae, r.feature, r.top_tokens) for r in sent] == [
        ("res2", 7, 3),
        ("res2", 7, 0),
        ("res2", 7, 0),
        ("res2", 7, 3),
    ]


def test_no_watch_note_when_no_watched_feature_is_edited(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--target", target, "generate", "hi", "--watch", "res2:130", "--edit", "res2:7=add:2"]
    assert main(argv) == 0
    assert not any(line.startswith("note:") for line in capsys.readouterr().err.splitlines())


def test_watch_note_for_a_feature_a_rule_or_the_preset_edits(
    fake: FakeSteering, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A rule's edit of the watched feature, known from the command line.
    argv = ["--target", target, "generate", "hi", "--watch", "res2:9", "--watch", "res2:130"]
    argv += ["--rule", "res2:1>2 -> res2:9=set:4"]
    assert main(argv) == 0
    assert WATCH_NOTE.format("res2:9") in capsys.readouterr().err.splitlines()
    # The preset's edits, known from the receipts.
    preset = fake.description.presets[0]
    edited = preset.edits[0]
    ref = f"{edited.sae}:{edited.feature}"
    argv = ["--target", target, "generate", "hi", "--watch", ref, "--preset", preset.name]
    assert main(argv) == 0
    assert WATCH_NOTE.format(ref) in capsys.readouterr().err.splitlines()


def test_watch_note_under_compare(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--target", target, "generate", "hi", "--compare", "--watch", "res2:7"]
    argv += ["--edit", "res2:7=set:15"]
    assert main(argv) == 0
    assert WATCH_NOTE.format("res2:7") in capsys.readouterr().err.splitlines()
