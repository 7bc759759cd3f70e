"""Rules, presets and compare() through both clients against the fake server: what goes over the
wire, what comes back (the "condition" finish reason, receipts, presets in DescribeModel), and
the two concurrent runs of a comparison."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
import pytest

from steering_client import (
    AsyncSteeringClient,
    Chunk,
    Comparison,
    Completion,
    Edit,
    Preset,
    Rule,
    SteeringClient,
    SteeringClientError,
    Usage,
)
from steering_proto.v1 import steering_pb2 as pb
from tests.client.fake_server import RES2_SHA256, VEC_SHA256, FakeSteering, receipt_counts

T = TypeVar("T")

RULES = (
    Rule.stop_when("res2", 5, -1.5),
    Rule.apply_when("res2", 6, 2.0, Edit.set("res2", 9, 4.0), Edit.ablate("res2", 10)),
)
CALM_EDITS = (Edit.set("res2", 7, 8.0), Edit.ablate("res2", 3, only_when_active=True))
STEERED = (
    pb.GenerateResponse(token_ids=[20], text="Calm"),
    pb.GenerateResponse(
        token_ids=[21, 22],
        text=" seas",
        finish_reason=pb.FINISH_REASON_EOS,
        usage=pb.Usage(prompt_tokens=3, completion_tokens=3),
        seed=1234,
    ),
)


def run_async(target: str, body: Callable[[AsyncSteeringClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with AsyncSteeringClient(target) as client:
            return await body(client)

    return asyncio.run(main())


def generate_requests(fake: FakeSteering) -> list[pb.GenerateRequest]:
    requests = [r for r in fake.requests if isinstance(r, pb.GenerateRequest)]
    assert len(requests) == len(fake.requests)
    return requests


def split_pair(fake: FakeSteering) -> tuple[pb.GenerateRequest, pb.GenerateRequest]:
    """The (unsteered, steered) requests of one comparison, whichever arrived first."""
    first, second = generate_requests(fake)
    steers = [bool(r.edits or r.rules or r.preset) for r in (first, second)]
    assert sorted(steers) == [False, True], "exactly one of the two requests steers"
    return (second, first) if steers[0] else (first, second)


def without_steering(request: pb.GenerateRequest) -> pb.GenerateRequest:
    copy = pb.GenerateRequest()
    copy.CopyFrom(request)
    for field in ("edits", "rules", "preset"):
        copy.ClearField(field)
    return copy


# --- generate with rules and a preset -------------------------------------------------------


def test_generate_sends_rules_and_preset(fake: FakeSteering, target: str) -> None:
    own = Edit.set("res2", 7, 2.0)  # replaces the preset's edit of res2:7
    with SteeringClient(target) as client:
        chunks = list(client.generate("The sea", edits=[own], rules=RULES, preset="calm"))
    (request,) = generate_requests(fake)
    assert list(request.rules) == [rule.to_proto() for rule in RULES]
    assert request.preset == "calm"
    assert list(request.edits) == [own.to_proto()]
    # The fake receipts the edits in effect: the preset's not replaced, the request's, the rules'.
    in_effect = [CALM_EDITS[1], own, Edit.set("res2", 9, 4.0), Edit.ablate("res2", 10)]
    receipts = chunks[-1].receipts
    assert [r.edit for r in receipts] == in_effect
    assert [(r.applied_positions, r.active_positions) for r in receipts] == [
        receipt_counts(i) for i in range(4)
    ]


def test_generate_text_sends_rules_and_preset(fake: FakeSteering, target: str) -> None:
    with SteeringClient(target) as client:
        assert client.generate_text("hi", rules=RULES[:1], preset="bare") == "Hello, world!"
    (request,) = generate_requests(fake)
    assert (list(request.rules), request.preset) == ([RULES[0].to_proto()], "bare")


def test_rules_may_be_protos(fake: FakeSteering, target: str) -> None:
    rule = pb.Rule(when=pb.FeatureRef(sae="vec", feature=1), above=-3.0, stop=True)
    with SteeringClient(target) as client:
        client.generate_text("hi", rules=[rule])
    (request,) = generate_requests(fake)
    assert list(request.rules) == [rule]


def test_defaults_send_no_rules_and_no_preset(fake: FakeSteering, target: str) -> None:
    with SteeringClient(target) as client:
        client.generate_text("hi")
    (request,) = generate_requests(fake)
    assert (len(request.rules), request.preset) == (0, "")


def test_a_preset_that_is_not_a_string_names_the_field(fake: FakeSteering, target: str) -> None:
    with SteeringClient(target) as client, pytest.raises(ValueError, match=r"^preset: "):
        client.generate("hi", preset=3)  # type: ignore[arg-type]
    assert fake.requests == []


def test_async_generate_sends_rules_and_preset(fake: FakeSteering, target: str) -> None:
    async def body(client: AsyncSteeringClient) -> tuple[list[Chunk], str]:
        chunks = [c async for c in client.generate("hi", rules=RULES, preset="calm")]
        text = await client.generate_text("hi", rules=RULES[1:], preset="bare")
        return chunks, text

    chunks, text = run_async(target, body)
    assert text == "Hello, world!"
    first, second = generate_requests(fake)
    assert (list(first.rules), first.preset) == ([r.to_proto() for r in RULES], "calm")
    assert (list(second.rules), second.preset) == ([RULES[1].to_proto()], "bare")
    assert [r.edit for r in chunks[-1].receipts][:2] == list(CALM_EDITS)


def test_a_stop_rule_that_fires_reads_condition(fake: FakeSteering, target: str) -> None:
    fake.stop_rule_fires_after = 1
    with SteeringClient(target) as client:
        chunks = list(client.generate("hi", rules=[Rule.stop_when("res2", 5, 0.5)]))
    assert [c.finish_reason for c in chunks] == [None, "condition"]
    whole = Completion.from_chunks(chunks)
    assert (whole.text, whole.finish_reason, whole.usage) == ("Hello", "condition", Usage(3, 2))


def test_async_stop_rule_reads_condition(fake: FakeSteering, target: str) -> None:
    fake.stop_rule_fires_after = 2

    async def body(client: AsyncSteeringClient) -> list[Chunk]:
        return [c async for c in client.generate("hi", rules=[Rule.stop_when("res2", 5, 0.5)])]

    chunks = run_async(target, body)
    assert "".join(c.text for c in chunks) == "Hello, world"
    assert chunks[-1].finish_reason == "condition"


def test_condition_finish_reason_reads_as_a_word() -> None:
    chunk = Chunk.from_proto(pb.GenerateResponse(finish_reason=pb.FINISH_REASON_CONDITION))
    assert chunk.finish_reason == "condition"
    assert chunk.is_last


# --- describe: kinds, hashes, presets, rule limit --------------------------------------------


def test_describe_reads_kind_sha256_presets_and_the_rule_limit(target: str) -> None:
    with SteeringClient(target) as client:
        desc = client.describe()
    assert (desc.sae("res2").kind, desc.sae("res2").sha256) == ("jumprelu", RES2_SHA256)
    assert (desc.sae("vec").kind, desc.sae("vec").sha256) == ("vector", VEC_SHA256)
    assert desc.limits.max_rules_per_request == 8
    assert desc.presets == (
        Preset("calm", "calm sea", CALM_EDITS),
        Preset("bare", "", (Edit.add("vec", 1, 0.0),)),
    )
    assert desc.preset("calm").edits == CALM_EDITS
    with pytest.raises(KeyError):
        desc.preset("stormy")


def test_async_describe_reads_presets(target: str) -> None:
    async def body(client: AsyncSteeringClient) -> tuple[str, ...]:
        return tuple(p.name for p in (await client.describe()).presets)

    assert run_async(target, body) == ("calm", "bare")


def test_describe_without_presets(fake: FakeSteering, target: str) -> None:
    fake.description = pb.DescribeModelResponse()
    with SteeringClient(target) as client:
        desc = client.describe()
    assert (desc.presets, desc.saes, desc.limits.max_rules_per_request) == ((), (), 0)


# --- compare ---------------------------------------------------------------------------------


def test_compare_sends_the_request_twice_differing_only_in_steering(
    fake: FakeSteering, target: str
) -> None:
    fake.steered_chunks = STEERED
    fake.barrier = threading.Barrier(2)  # both calls must be in flight together to pass
    with SteeringClient(target) as client:
        comparison = client.compare(
            "The sea",
            edits=[Edit.add("res2", 4, 1.0)],
            rules=RULES,
            preset="calm",
            watch=[("res2", 7)],
            max_new_tokens=9,
            temperature=0.7,
            top_k=5,
            top_p=0.9,
            stop=["."],
            ignore_eos=True,
        )
    unsteered, steered = split_pair(fake)
    assert (len(unsteered.edits), len(unsteered.rules), unsteered.preset) == (0, 0, "")
    assert list(steered.edits) == [Edit.add("res2", 4, 1.0).to_proto()]
    assert list(steered.rules) == [rule.to_proto() for rule in RULES]
    assert steered.preset == "calm"
    assert without_steering(steered) == unsteered  # watch, sampling and input are shared
    assert [(w.sae, w.feature) for w in unsteered.watch] == [("res2", 7)]
    # No seed given, temperature > 0: the client picked one 63-bit seed for both.
    assert unsteered.sampling.HasField("seed")
    assert unsteered.sampling.seed == steered.sampling.seed < 2**63
    assert isinstance(comparison, Comparison)
    assert comparison.unsteered.text == "Hello, world!"
    assert comparison.steered.text == "Calm seas"
    assert comparison.unsteered.finish_reason == "length"
    assert comparison.steered.finish_reason == "eos"
    assert comparison.unsteered.receipts == ()
    assert len(comparison.steered.receipts) == 2 + 1 + 2  # the preset's, its own, the rules'
    assert len(comparison.unsteered.watched) == len(comparison.unsteered.token_ids) == 4


def test_compare_picks_a_fresh_seed_per_comparison(fake: FakeSteering, target: str) -> None:
    with SteeringClient(target) as client:
        client.compare("hi", preset="calm", temperature=1.0)
        client.compare("hi", preset="calm", temperature=1.0)
    seeds = [r.sampling.seed for r in generate_requests(fake)]
    assert seeds[0] == seeds[1] and seeds[2] == seeds[3]
    assert seeds[0] != seeds[2]  # equal with probability 2**-63


def test_compare_keeps_the_callers_seed(fake: FakeSteering, target: str) -> None:
    with SteeringClient(target) as client:
        client.compare("hi", edits=[Edit.ablate("res2", 1)], temperature=0.5, seed=42)
    unsteered, steered = split_pair(fake)
    assert unsteered.sampling.seed == steered.sampling.seed == 42


def test_greedy_compare_sends_no_seed(fake: FakeSteering, target: str) -> None:
    with SteeringClient(target) as client:
        client.compare("hi", edits=[Edit.ablate("res2", 1)])
    unsteered, steered = split_pair(fake)
    assert not unsteered.sampling.HasField("seed")
    assert without_steering(steered) == unsteered


def test_compare_marks_a_request_id_per_run(fake: FakeSteering, target: str) -> None:
    with SteeringClient(target) as client:
        client.compare(chat=[("user", "Hi")], rules=RULES[:1], request_id="cmp-1")
    unsteered, steered = split_pair(fake)
    assert (unsteered.request_id, steered.request_id) == ("cmp-1/unsteered", "cmp-1/steered")
    assert unsteered.WhichOneof("input") == steered.WhichOneof("input") == "chat"


def test_compare_without_steering_is_refused(fake: FakeSteering, target: str) -> None:
    with SteeringClient(target) as client, pytest.raises(ValueError, match="nothing to compare"):
        client.compare("hi", watch=[("res2", 7)], temperature=1.0)
    assert fake.requests == []


def test_a_failed_run_cancels_the_other(fake: FakeSteering, target: str) -> None:
    fake.hang_after = 1  # the unsteered run would hang for 10 s unless cancelled
    start = time.monotonic()
    with SteeringClient(target) as client, pytest.raises(SteeringClientError) as caught:
        client.compare("hi", preset="stormy")
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details.startswith("preset: ")
    assert time.monotonic() - start < 5.0


def test_async_compare_runs_both_together_with_one_seed(fake: FakeSteering, target: str) -> None:
    fake.steered_chunks = STEERED
    fake.barrier = threading.Barrier(2)

    async def body(client: AsyncSteeringClient) -> Comparison:
        return await client.compare("hi", rules=RULES, preset="calm", temperature=0.9)

    comparison = run_async(target, body)
    unsteered, steered = split_pair(fake)
    assert without_steering(steered) == unsteered
    assert unsteered.sampling.HasField("seed")
    assert unsteered.sampling.seed == steered.sampling.seed
    assert (comparison.unsteered.text, comparison.steered.text) == ("Hello, world!", "Calm seas")


def test_async_compare_without_steering_is_refused(fake: FakeSteering, target: str) -> None:
    async def body(client: AsyncSteeringClient) -> None:
        with pytest.raises(ValueError, match="nothing to compare"):
            await client.compare("hi")

    run_async(target, body)
    assert fake.requests == []


def test_async_failed_run_cancels_the_other(fake: FakeSteering, target: str) -> None:
    fake.hang_after = 1

    async def body(client: AsyncSteeringClient) -> SteeringClientError:
        with pytest.raises(SteeringClientError) as caught:
            await client.compare("hi", preset="stormy")
        return caught.value

    start = time.monotonic()
    error = run_async(target, body)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert time.monotonic() - start < 5.0
