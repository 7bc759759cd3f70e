"""Inspect, search, contrast, watched features and receipts, through the sync and async clients
against the fake server: the request protos they build, the dataclasses they read back."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import grpc
import pytest

from steering_client import (
    AsyncSteeringClient,
    Chunk,
    Completion,
    Contrast,
    Edit,
    EditReceipt,
    FeatureActivation,
    FeatureContrast,
    FeatureMatch,
    FeatureRef,
    InspectedToken,
    SteeringClient,
    SteeringClientError,
    parse_feature_ref,
)
from steering_proto.v1 import steering_pb2 as pb
from tests.client.fake_server import FakeSteering, receipt_counts, watched_value


class Both:
    """Makes one call through the sync or the async client, with the same arguments.

    `generate` is collected into a list of chunks; every other method returns its result.
    """

    def __init__(self, target: str, kind: str) -> None:
        self.target, self.kind = target, kind

    def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.kind == "sync":
            with SteeringClient(self.target) as client:
                result = getattr(client, name)(*args, **kwargs)
                return list(result) if name == "generate" else result

        async def main() -> Any:
            async with AsyncSteeringClient(self.target) as client:
                if name == "generate":
                    return [chunk async for chunk in client.generate(*args, **kwargs)]
                return await getattr(client, name)(*args, **kwargs)

        return asyncio.run(main())


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest, target: str) -> Both:
    return Both(target, request.param)


def test_inspect_sends_every_field(fake: FakeSteering, call: Both) -> None:
    edit = Edit.set("res2", 3, 6.0, only_when_active=True)
    call(
        "inspect",
        "The sea",
        saes=["res2", "res3"],
        top_k=5,
        features=[FeatureRef("res2", 7), ("res3", 9)],
        edits=[edit],
    )
    (request,) = fake.requests
    assert isinstance(request, pb.InspectRequest)
    assert request.WhichOneof("input") == "prompt" and request.prompt == "The sea"
    assert list(request.saes) == ["res2", "res3"]
    assert request.top_k == 5
    assert [(f.sae, f.feature) for f in request.features] == [("res2", 7), ("res3", 9)]
    assert list(request.edits) == [edit.to_proto()]


def test_inspect_sends_no_top(fake: FakeSteering, call: Both) -> None:
    call("inspect", "The sea", features=[("res2", 7)], no_top=True)
    (request,) = fake.requests
    assert isinstance(request, pb.InspectRequest)
    assert request.no_top and request.top_k == 0


def test_inspect_defaults_and_chat(fake: FakeSteering, call: Both) -> None:
    call("inspect", "x")
    call("inspect", chat=[("user", "Hi"), {"role": "model", "content": "Yo"}])
    plain, chatted = fake.requests
    assert plain == pb.InspectRequest(prompt="x")
    assert isinstance(chatted, pb.InspectRequest)
    assert chatted.WhichOneof("input") == "chat"
    assert [(m.role, m.content) for m in chatted.chat.messages] == [("user", "Hi"), ("model", "Yo")]


def test_inspect_reads_every_token(call: Both) -> None:
    tokens = call("inspect", "The sea", features=[("res2", 7)])
    seven = FeatureActivation("res2", 7, 1.25, "")
    assert tokens == (
        InspectedToken(2, "<bos>", True, (), (FeatureActivation("res2", 7, 0.0, ""),)),
        InspectedToken(
            651, "The", False, (FeatureActivation("res2", 12, 3.5, "articles"), seven), (seven,)
        ),
        InspectedToken(
            9001,
            " sea\n",
            False,
            (FeatureActivation("res2", 7, 8.5, "the sea"),),
            (FeatureActivation("res2", 7, 8.5, "the sea"),),
        ),
    )


def test_search_sends_and_reads_matches(fake: FakeSteering, call: Both) -> None:
    matches = call("search", "the sea", sae="res2", limit=3)
    assert fake.requests == [pb.SearchFeaturesRequest(query="the sea", sae="res2", limit=3)]
    assert matches == (
        FeatureMatch("res2", 7, "the sea", 2.5, typical_max=12.5, frequency=0.125),
        FeatureMatch("res2", 130, "sea creatures", 1.25),
    )
    call("search", "waves")
    assert fake.requests[-1] == pb.SearchFeaturesRequest(query="waves")


def test_search_by_activation_sends_the_enum_and_reads_how_each_was_found(
    fake: FakeSteering, call: Both
) -> None:
    fake.matches = pb.SearchFeaturesResponse(
        matches=[pb.FeatureMatch(sae="res2", feature=7, label="the sea", score=0.75,
                                 found_by="activation")]
    )  # fmt: skip
    matches = call("search", "ocean", by="activation")
    assert fake.requests == [pb.SearchFeaturesRequest(query="ocean", by=pb.SEARCH_BY_ACTIVATION)]
    assert matches == (FeatureMatch("res2", 7, "the sea", 0.75, found_by="activation"),)
    call("search", "ocean", by="both")
    call("search", "ocean", by="labels")
    # labels is the default: left unset
    assert [r.by for r in fake.requests[1:]] == [pb.SEARCH_BY_BOTH, pb.SEARCH_BY_UNSPECIFIED]


def test_contrast_sends_both_sets_and_reads_both_directions(fake: FakeSteering, call: Both) -> None:
    result = call("contrast", (t for t in ["waves", "tides"]), ["sand"], sae="res2", top_k=4)
    (request,) = fake.requests
    assert request == pb.ContrastRequest(a=["waves", "tides"], b=["sand"], sae="res2", top_k=4)
    assert result == Contrast(
        toward_a=(
            FeatureContrast("res2", 7, 4.5, 0.25, "the sea"),
            FeatureContrast("res2", 40, 1.5, 0.5, ""),
        ),
        toward_b=(FeatureContrast("res2", 99, 0.0, 2.75, "deserts"),),
    )


def test_watch_and_receipts_round_trip_on_generate(fake: FakeSteering, call: Both) -> None:
    edits = [Edit.set("demo", 7, 15.0), Edit.ablate("demo", 3, only_when_active=True)]
    watch = [FeatureRef("demo", 7), ("demo:x", 12)]
    chunks = call("generate", "The sea is", edits=edits, watch=watch)
    (request,) = fake.requests
    assert isinstance(request, pb.GenerateRequest)
    assert [(w.sae, w.feature) for w in request.watch] == [("demo", 7), ("demo:x", 12)]
    for chunk in chunks:
        assert chunk.watched == tuple(
            (watched_value(t, 0), watched_value(t, 1)) for t in chunk.token_ids
        )
    assert [c.receipts for c in chunks[:-1]] == [(), ()]
    expected = tuple(EditReceipt(e, *receipt_counts(i)) for i, e in enumerate(edits))
    assert chunks[-1].receipts == expected
    whole = Completion.from_chunks(chunks)
    assert whole.watched == ((10.25, 10.5), (11.25, 11.5), (12.25, 12.5), (13.25, 13.5))
    assert whole.receipts == expected
    assert str(whole.receipts[0]) == "demo:7=set:15 applied at 40 positions, active at 0"


def test_nothing_watched_reads_no_activations(fake: FakeSteering, call: Both) -> None:
    chunks = call("generate", "hi")
    assert all(c.watched == () and c.receipts == () for c in chunks)
    (request,) = fake.requests
    assert isinstance(request, pb.GenerateRequest)
    assert len(request.watch) == 0


def test_generate_text_sends_watch(fake: FakeSteering, target: str) -> None:
    with SteeringClient(target) as client:
        assert client.generate_text("hi", watch=[("res2", 4)]) == "Hello, world!"

    async def main() -> str:
        async with AsyncSteeringClient(target) as client:
            return await client.generate_text("hi", watch=[FeatureRef("res2", 5)])

    assert asyncio.run(main()) == "Hello, world!"
    watched = [[(w.sae, w.feature) for w in r.watch] for r in fake.requests]  # type: ignore[attr-defined]
    assert watched == [[("res2", 4)], [("res2", 5)]]


@pytest.mark.parametrize(
    ("name", "args"),
    [("inspect", ("hi",)), ("search", ("sea",)), ("contrast", (["a"], ["b"]))],
)
def test_failures_raise_steering_client_error(
    fake: FakeSteering, call: Both, name: str, args: tuple[Any, ...]
) -> None:
    fake.abort = (grpc.StatusCode.INVALID_ARGUMENT, "top_k: at most 64")
    with pytest.raises(SteeringClientError) as caught:
        call(name, *args)
    assert (caught.value.code, caught.value.details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "top_k: at most 64",
    )


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "why"),
    [
        ("inspect", (), {}, "exactly one of prompt or chat"),
        ("inspect", ("x",), {"saes": "res2"}, "saes: give a list of strings"),
        ("inspect", ("x",), {"top_k": -1}, "top_k: Value out of range"),
        ("inspect", ("x",), {"features": [("res2", -1)]}, "features[0]: feature: index must be"),
        ("inspect", ("x",), {"features": ["res2:7"]}, "features[0]: 'res2:7' is not a FeatureRef"),
        ("search", ("q",), {"limit": 2**32}, "limit: Value out of range"),
        ("search", ("q",), {"by": "meaning"}, "by: 'meaning' is not one of labels, activation"),
        ("contrast", ("waves", ["b"]), {}, "a: give a list of strings"),
        ("contrast", (["a"], [1]), {}, "b[0]: 1 is not a string"),
        ("contrast", (["a"], ["b"]), {"top_k": -2}, "top_k: Value out of range"),
        ("generate", ("x",), {"watch": [("res2", 1, 2)]}, "watch[0]: ('res2', 1, 2) is not"),
    ],
)
def test_malformed_requests_fail_before_any_call(
    fake: FakeSteering,
    call: Both,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    why: str,
) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        call(name, *args, **kwargs)
    assert fake.requests == []


def test_describe_reads_labels_and_the_new_limits(target: str) -> None:
    with SteeringClient(target) as client:
        desc = client.describe()
    assert desc.sae("res2").labels == 200
    limits = desc.limits
    assert (limits.max_top_k, limits.max_inspect_features, limits.max_watched_features) == (
        64,
        16,
        8,
    )
    assert (limits.max_contrast_texts, limits.max_search_results) == (256, 100)
    assert not hasattr(limits, "max_batch_size")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("res12:1234", FeatureRef("res12", 1234)),
        (" res12 : 7 ", FeatureRef("res12", 7)),
        ("gemma:res:12:5", FeatureRef("gemma:res:12", 5)),  # the feature follows the last ':'
        ("res12:4294967295", FeatureRef("res12", 2**32 - 1)),
    ],
)
def test_parse_feature_ref_accepts(text: str, expected: FeatureRef) -> None:
    assert parse_feature_ref(text) == expected
    assert parse_feature_ref(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "expected SAE:FEATURE"),
        ("res12", "expected SAE:FEATURE"),
        (":7", "expected SAE:FEATURE"),
        ("res12:", "non-negative integer"),
        ("res12:x", "non-negative integer"),
        ("res12:-1", "non-negative integer"),
        ("res12:²", "non-negative integer"),
        ("res12:4294967296", "larger than"),
        ("res12:7=set:1", "no '='"),
    ],
)
def test_parse_feature_ref_rejects_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(ValueError, match="bad feature") as caught:
        parse_feature_ref(text)
    assert why in str(caught.value)


@pytest.mark.parametrize(("sae", "feature"), [("", 1), ("r", -1), ("r", 2**32)])
def test_feature_ref_rejects_impossible_refs(sae: str, feature: int) -> None:
    with pytest.raises(ValueError, match="feature"):
        FeatureRef(sae, feature)


def test_receipt_reads_as_one_line() -> None:
    msg = pb.EditReceipt(
        edit=Edit.set("demo", 7, 15.0).to_proto(), applied_positions=43, active_positions=2
    )
    receipt = EditReceipt.from_proto(msg)
    assert receipt == EditReceipt(Edit.set("demo", 7, 15.0), 43, 2)
    assert str(receipt) == "demo:7=set:15 applied at 43 positions, active at 2"
    one = EditReceipt(Edit.ablate("demo", 3, only_when_active=True), 1, 1)
    assert str(one) == "demo:3=ablate@active applied at 1 position, active at 1"


def test_edit_from_proto_inverts_to_proto_and_drops_an_ablates_value() -> None:
    for edit in (Edit.add("a:b", 0, -2.5, only_when_active=True), Edit.scale("r", 9, 0.5)):
        assert Edit.from_proto(edit.to_proto()) == edit
    msg = pb.FeatureEdit(sae="r", feature=1, mode=pb.EDIT_MODE_ABLATE, value=3.0)
    assert Edit.from_proto(msg) == Edit.ablate("r", 1)
    with pytest.raises(ValueError, match="unknown mode"):
        Edit.from_proto(pb.FeatureEdit(sae="r", feature=1))


def test_chunk_reads_watched_per_token() -> None:
    msg = pb.GenerateResponse(
        token_ids=[5, 6], text="ab", watched=[pb.WatchedToken(activations=[1.5, 0.0])] * 2
    )
    assert Chunk.from_proto(msg).watched == ((1.5, 0.0), (1.5, 0.0))
