"""Scenario 8: fuzzed and hostile requests. Each is answered OK or INVALID_ARGUMENT (never
INTERNAL or UNKNOWN), while a canary greedy stream stays byte-identical to its solo run."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steering_proto.v1 import steering_pb2 as pb
from tests.reliability.conftest import RIGS, Scale
from tests.reliability.process import FUZZ_MAX_NEW_TOKENS, ProcessRig, fuzz_server
from tests.reliability.rig import ADD, SET, Client, Result, gen, outcome_of
from tests.server.harness import edit

MAX_NEW_TOKENS = FUZZ_MAX_NEW_TOKENS  # the canary's length; fuzzed requests ask for at most 3
FIELD = re.compile(r"^[a-z_]+(\[\d+\])?(\.[a-z_]+(\[\d+\])?)*: ")  # "edits[3].value: ..."
GENERATE = "/steering.v1.SteeringService/Generate"


@pytest.fixture(scope="module")
def fuzz_rig(
    model_folders: dict[str, Path],
    sae_specs_reliability: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProcessRig]:
    """The real server process with the fuzzers' tight limits."""
    rig = fuzz_server(
        model_folders["gemma2"], sae_specs_reliability, tmp_path_factory.mktemp("fuzz")
    )
    RIGS.append(rig)
    yield rig
    rig.close()


CANARIES = [
    gen("The canary sings of the sea", rid="canary", max_new_tokens=200, ignore_eos=True),
    gen(
        "The canary sings of the sea",
        rid="canary-steered",
        edits=[edit("res", 5, SET, 30.0), edit("deep", 3, ADD, -12.0)],
        max_new_tokens=200,
        ignore_eos=True,
    ),
]


@contextmanager
def canary(rig: Client, max_runs: int = 10_000) -> Iterator[list[Result]]:
    """Canary streams, one after another, for as long as the block runs."""
    references = [rig.reference(c) for c in CANARIES]
    runs: list[Result] = []
    stop = threading.Event()

    def sing() -> None:
        while not stop.is_set() and len(runs) < max_runs:
            i = len(runs) % len(CANARIES)
            result = rig.call(CANARIES[i])
            runs.append(result)
            if result.ids != references[i].ids or result.text != references[i].text:
                return  # reported below
            stop.wait(0.1)  # a breath between runs: the fuzzed calls get the engine too

    thread = threading.Thread(target=sing, daemon=True)
    thread.start()
    try:
        yield runs
    finally:
        stop.set()
        thread.join(120)
    assert runs, "the canary never sang"
    for i, run in enumerate(runs):
        reference = references[i % len(CANARIES)]
        assert run.outcome == "ok", run.details
        assert run.ids == reference.ids and run.text == reference.text, f"canary run {i}"


# ---- strategies over the proto --------------------------------------------------------------
# A valid request, then up to three hostile mutations of its fields: valid calls run (and
# carry extreme but valid values), and each kind of bad field is met alone and in company.

SPECIAL = ["<bos>", "<eos>", "<pad>", "<unk>", "<start_of_turn>", "<end_of_turn>", "\x00", "\ufeff"]
CHARS = st.characters(codec="utf-8")  # any code point but surrogates (not encodable)
WIDTHS = {"res": 128, "deep": 96}


def _text(min_size: int = 0, max_size: int = 30) -> st.SearchStrategy[str]:
    plain = st.text(CHARS, min_size=min_size, max_size=max_size)
    special = st.lists(st.sampled_from(SPECIAL) | plain, min_size=1, max_size=4).map("".join)
    return plain | special


def _nonblank(max_size: int = 30) -> st.SearchStrategy[str]:
    return _text(1, max_size).filter(lambda t: t.strip() != "")


def _huge() -> st.SearchStrategy[str]:
    return st.builds(lambda s, n: s * n, _nonblank(8), st.integers(100, 4000))


def _float32(lo: float, hi: float) -> st.SearchStrategy[float]:
    """float32 values in [lo, hi] (the bounds rounded inwards), the bounds themselves likelier."""
    lo32, hi32 = np.float32(lo), np.float32(hi)
    if lo32 < lo:
        lo32 = np.nextafter(lo32, np.float32(np.inf))
    if hi32 > hi:
        hi32 = np.nextafter(hi32, np.float32(-np.inf))
    bounds = [float(lo32), float(hi32)]
    return st.floats(*bounds, width=32) | st.sampled_from(bounds)


BAD_FLOATS = st.sampled_from([float("nan"), float("inf"), float("-inf"), 3e38, -3e38])
UINT32 = st.integers(0, 2**32 - 1) | st.sampled_from([0, 1, 2**31, 2**32 - 1])
# Built once: strategies made inside a draw cost hypothesis a validation each time.
VALID_REFS = st.lists(
    st.sampled_from(sorted(WIDTHS)).flatmap(
        lambda sae: st.builds(pb.FeatureRef, sae=st.just(sae), feature=st.integers(0, 95))
    ),
    max_size=4,
)
EDIT_VALUE = _float32(-1e4, 1e4)  # up to the server's cap: extreme, still valid
WHEN = st.builds(pb.FeatureRef, sae=st.sampled_from(sorted(WIDTHS)), feature=st.integers(0, 95))
TEMPERATURE = st.just(0.0) | _float32(1e-3, 100.0)
TOP_P = _float32(0.0, 1.0)
STOPS = st.lists(_text(1, 16), max_size=4)
REQUEST_ID = _text(0, 40)
PROMPT = _nonblank(60)
TURNS = st.lists(
    st.tuples(st.sampled_from(["user", "model", "assistant"]), _nonblank(40)),
    min_size=1,
    max_size=3,
)


@st.composite
def _valid_edits(draw: st.DrawFn) -> list[pb.FeatureEdit]:
    edits: dict[tuple[str, int], pb.FeatureEdit] = {}  # one edit per (SAE, feature)
    for _ in range(draw(st.integers(0, 8))):
        sae = draw(st.sampled_from(sorted(WIDTHS)))
        feature = draw(st.integers(0, WIDTHS[sae] - 1))
        edits[sae, feature] = pb.FeatureEdit(
            sae=sae,
            feature=feature,
            mode=draw(st.integers(1, 4)),
            value=draw(EDIT_VALUE),
            only_when_active=draw(st.booleans()),
        )
    return list(edits.values())


@st.composite
def _rule(draw: st.DrawFn) -> pb.Rule:
    """A well-formed rule (its edits may still clash with the request's: INVALID_ARGUMENT)."""
    rule = pb.Rule(when=draw(WHEN), above=draw(_float32(-5.0, 5.0)))
    if draw(st.booleans()):
        rule.stop = True
    else:
        rule.apply.edits.extend(draw(_valid_edits().filter(bool)))
    return rule


RULES = st.lists(_rule(), max_size=2)


@st.composite
def _valid(draw: st.DrawFn) -> pb.GenerateRequest:
    sampling = pb.SamplingParams(
        max_new_tokens=draw(st.integers(0, 3)),  # 0: the server's default (2)
        temperature=draw(TEMPERATURE),
        top_k=draw(UINT32),
        top_p=draw(TOP_P),
        stop=draw(STOPS),
        ignore_eos=draw(st.booleans()),
    )
    if draw(st.booleans()):
        sampling.seed = draw(st.integers(0, 2**64 - 1))
    message = pb.GenerateRequest(
        sampling=sampling,
        edits=draw(_valid_edits()),
        request_id=draw(REQUEST_ID),
        watch=draw(VALID_REFS),
        rules=draw(RULES),
        preset=draw(st.sampled_from(["", "", "calm"])),
    )
    if draw(st.booleans()):
        message.prompt = draw(PROMPT)
    else:
        message.chat.CopyFrom(_chat(draw(TURNS)))
    return message


def _chat(turns: list[tuple[str, str]]) -> pb.Chat:
    return pb.Chat(messages=[pb.ChatMessage(role=r, content=c) for r, c in turns])


def _set_sampling(field: str, values: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return values.map(lambda v: lambda m: setattr(m.sampling, field, v))


def _set_prompt(values: st.SearchStrategy[str]) -> st.SearchStrategy[object]:
    return values.map(lambda v: lambda m: setattr(m, "prompt", v))


def _set_chat(values: st.SearchStrategy[list[tuple[str, str]]]) -> st.SearchStrategy[object]:
    return values.map(lambda turns: lambda m: m.chat.CopyFrom(_chat(turns)))


def _add_edit(**fields: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    base = {
        "sae": st.sampled_from(sorted(WIDTHS)),
        "feature": st.integers(0, 95),
        "mode": st.integers(1, 4),
        "value": _float32(-10.0, 10.0),
    }
    return st.fixed_dictionaries(base | fields).map(
        lambda kw: lambda m: m.edits.append(pb.FeatureEdit(**kw))
    )


def _add_ref(field: str, **fields: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """Append a FeatureRef to the message's repeated `field` (watch, features)."""
    base = {"sae": st.sampled_from(sorted(WIDTHS)), "feature": st.integers(0, 95)}
    return st.fixed_dictionaries(base | fields).map(
        lambda kw: lambda m: getattr(m, field).append(pb.FeatureRef(**kw))
    )


def _duplicate_edit(m: pb.GenerateRequest) -> None:
    if m.edits:
        m.edits.append(m.edits[0])
    else:
        m.edits.extend([pb.FeatureEdit(sae="res", feature=1, mode=1, value=1.0)] * 2)


MUTATIONS = st.one_of(
    _set_prompt(st.sampled_from(["", " ", "\n\t "]) | _huge()),
    _set_chat(st.just([])),
    _set_chat(st.lists(st.tuples(st.sampled_from(["system", "wizard", "", "USER"]), _text()))),
    _set_chat(st.lists(st.tuples(st.just("user"), st.sampled_from(["", "  "])), min_size=1)),
    _set_chat(st.tuples(st.just("user"), _huge()).map(lambda turn: [turn])),
    st.just(lambda m: m.ClearField("input")),
    _set_sampling("temperature", BAD_FLOATS | _float32(-1e3, -1e-45)),
    _set_sampling("temperature", _float32(1e-45, 9e-4) | st.floats(100.01, 1e38)),
    _set_sampling("top_p", BAD_FLOATS | _float32(-1.0, -1e-45)),
    _set_sampling("top_p", _float32(1.0001, 1e6)),
    _set_sampling("max_new_tokens", st.integers(MAX_NEW_TOKENS + 1, 2**32 - 1)),
    st.lists(_nonblank(4), min_size=5, max_size=12).map(
        lambda v: lambda m: m.sampling.stop.extend(v)
    ),
    st.sampled_from(["", "x" * 17]).map(lambda v: lambda m: m.sampling.stop.append(v)),
    _add_edit(sae=st.sampled_from(["", "nope", "RES", "res "]) | _text()),
    _add_edit(feature=st.integers(96, 2**32 - 1)),
    _add_edit(mode=st.sampled_from([0, 5, 6, 2**31 - 1])),
    _add_edit(value=BAD_FLOATS | st.floats(1.0001e4, 1e38) | st.floats(-1e38, -1.0001e4)),
    st.just(_duplicate_edit),
    st.just(
        lambda m: m.edits.extend([pb.FeatureEdit(sae="res", mode=4, feature=i) for i in range(9)])
    ),
    _add_ref("watch", sae=st.sampled_from(["", "nope", "RES"]) | _text()),
    _add_ref("watch", feature=st.integers(96, 2**32 - 1)),
    st.just(lambda m: m.watch.extend([pb.FeatureRef(sae="res", feature=i) for i in range(17)])),
    st.sampled_from(["nope", " calm", "CALM"]).map(lambda v: lambda m: setattr(m, "preset", v)),
    st.just(lambda m: m.rules.add(when=pb.FeatureRef(sae="res", feature=1))),  # no action
    st.just(lambda m: m.rules.add(when=pb.FeatureRef(sae="res", feature=1), stop=False)),
    BAD_FLOATS.map(
        lambda v: (
            lambda m: m.rules.add(when=pb.FeatureRef(sae="res", feature=1), above=v, stop=True)
        )
    ),
    _text(0, 8).map(
        lambda v: lambda m: m.rules.add(when=pb.FeatureRef(sae=v, feature=1), stop=True)
    ),
    st.just(
        lambda m: m.rules.extend(
            [pb.Rule(when=pb.FeatureRef(sae="deep", feature=i), stop=True) for i in range(5)]
        )
    ),
)


@st.composite
def requests(draw: st.DrawFn) -> pb.GenerateRequest:
    message = draw(_valid())
    for mutate in draw(st.lists(MUTATIONS, max_size=3)):
        mutate(message)  # type: ignore[operator]
    return message


# ---- the discovery calls: Inspect, SearchFeatures, Contrast -----------------------------------

# A valid call, then at most one hostile mutation, as for Generate.
VALID_SAES = st.sampled_from(sorted(WIDTHS))
BAD_SAES = st.sampled_from(["nope", "RES", "res "]) | _text(1, 10)
SHORT = _nonblank(16)  # well within the rig's 64-token prompts, whatever the characters
TEXTS = st.lists(SHORT, min_size=1, max_size=4)


@st.composite
def _valid_inspect(draw: st.DrawFn) -> pb.InspectRequest:
    message = pb.InspectRequest(
        saes=draw(st.lists(VALID_SAES, max_size=2)),
        top_k=draw(st.integers(0, 8)),
        features=draw(VALID_REFS),
        edits=draw(_valid_edits()),
    )
    if draw(st.booleans()):
        message.prompt = draw(SHORT)
    else:
        message.chat.CopyFrom(_chat([("user", draw(SHORT))]))
    return message


INSPECT_MUTATIONS = st.one_of(
    BAD_SAES.map(lambda v: lambda m: m.saes.append(v)),
    st.integers(9, 2**32 - 1).map(lambda v: lambda m: setattr(m, "top_k", v)),
    _add_ref("features", sae=BAD_SAES),
    _add_ref("features", feature=st.integers(96, 2**32 - 1)),
    st.just(lambda m: m.features.extend([pb.FeatureRef(sae="res", feature=1)] * 5)),
    _set_prompt(st.sampled_from(["", " "]) | _huge()),
    st.just(lambda m: m.ClearField("input")),
    _add_edit(feature=st.integers(96, 2**32 - 1)),
)
SEARCHES = st.builds(
    pb.SearchFeaturesRequest,
    query=_nonblank(40),
    sae=VALID_SAES | st.just(""),
    limit=st.integers(0, 5),
)
SEARCH_MUTATIONS = st.one_of(
    st.sampled_from(["", " \n"]).map(lambda v: lambda m: setattr(m, "query", v)),
    BAD_SAES.map(lambda v: lambda m: setattr(m, "sae", v)),
    st.integers(6, 2**32 - 1).map(lambda v: lambda m: setattr(m, "limit", v)),
)
CONTRASTS = st.builds(
    pb.ContrastRequest, a=TEXTS, b=TEXTS, sae=VALID_SAES | st.just(""), top_k=st.integers(0, 8)
)
CONTRAST_MUTATIONS = st.one_of(
    st.sampled_from(["a", "b"]).map(lambda f: lambda m: m.ClearField(f)),
    st.just(lambda m: m.a.extend(["the sea"] * 5)),
    st.sampled_from(["", " ", "<bos>"]).map(lambda v: lambda m: m.b.append(v)),
    _huge().map(lambda v: lambda m: m.a.append(v)),
    BAD_SAES.map(lambda v: lambda m: setattr(m, "sae", v)),
    st.integers(9, 2**32 - 1).map(lambda v: lambda m: setattr(m, "top_k", v)),
)


DISCOVERY = [
    ("Inspect", _valid_inspect(), INSPECT_MUTATIONS),
    ("SearchFeatures", SEARCHES, SEARCH_MUTATIONS),
    ("Contrast", CONTRASTS, CONTRAST_MUTATIONS),
]


@st.composite
def _broken(
    draw: st.DrawFn, valid: st.SearchStrategy[Any], mutations: st.SearchStrategy[Any]
) -> object:
    message = draw(valid)
    draw(mutations)(message)
    return message


def _fuzz(
    scale: Scale, examples: int, messages: st.SearchStrategy[Any], check: Callable[[Any], None]
) -> None:
    @_settings(scale, examples)
    @given(message=messages)
    def one(message: Any) -> None:
        check(message)

    one()


def test_fuzzed_discovery_calls_are_ok_or_invalid_argument(
    fuzz_rig: ProcessRig, scale: Scale
) -> None:
    answers: dict[str, int] = {}

    def check(rpc: str, message: object) -> None:
        try:
            getattr(fuzz_rig.stub, rpc)(message, timeout=60)
            outcome = "ok"
        except grpc.RpcError as err:
            outcome = outcome_of(err.code())
            assert outcome == "invalid_argument", (rpc, outcome, err.details())
            assert FIELD.match(err.details() or ""), err.details()
        answers[f"{rpc} {outcome}"] = answers.get(f"{rpc} {outcome}", 0) + 1

    # Each call, whole and broken, gets its own share of the examples.
    examples = max(8, scale.fuzz_examples // 24)
    with canary(fuzz_rig):
        for rpc, valid, mutations in DISCOVERY:
            for messages in (valid, _broken(valid, mutations)):
                _fuzz(scale, examples, messages, partial(check, rpc))
    print(f"\nfuzzed discovery calls: {answers}")
    for rpc in ("Inspect", "SearchFeatures", "Contrast"):  # both answers were reached
        assert answers.get(f"{rpc} ok") and answers.get(f"{rpc} invalid_argument"), answers


# ---- invalid UTF-8 and arbitrary bytes: no Python client sends these, so they go raw ---------

INVALID_UTF8 = [
    b"\xff",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xc0\xaf",
    b"\xe2\x82",
]


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


@st.composite
def invalid_utf8_requests(draw: st.DrawFn) -> bytes:
    """A GenerateRequest whose one string field (any of them) carries invalid UTF-8."""
    bad = draw(st.text(max_size=5)).encode() + draw(st.sampled_from(INVALID_UTF8))
    where = draw(st.sampled_from(["prompt", "role", "content", "stop", "sae", "request_id"]))
    good = _field(1, b"Hi") + _field(3, _field(6, b"x"))
    wrap = {
        "prompt": lambda b: _field(1, b),
        "role": lambda b: _field(2, _field(1, _field(1, b) + _field(2, b"hi"))),
        "content": lambda b: _field(2, _field(1, _field(1, b"user") + _field(2, b))),
        "stop": lambda b: _field(3, _field(6, b)),
        "sae": lambda b: _field(4, _field(1, b)),
        "request_id": lambda b: _field(5, b),
    }[where]
    return good + wrap(bad)


def _raw_call(rig: ProcessRig, body: bytes) -> Result:
    call = rig.channel.unary_stream(GENERATE, request_serializer=None)
    result = rig.consume(call(body, timeout=30))
    return result


def _check_answer(result: Result) -> None:
    assert result.outcome in ("ok", "invalid_argument"), (result.outcome, result.details)
    if result.outcome == "ok":
        assert result.finals == 1 and result.chunks[-1].finish_reason != 0
        assert result.chunks[-1].usage.completion_tokens <= 3
    else:
        assert FIELD.match(result.details), result.details
        assert "Traceback" not in result.details and "Error" not in result.details


def _settings(scale: Scale, examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=scale.name == "small",  # CI runs the same examples every time
        database=None,  # nothing written into the checkout
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def test_fuzzed_requests_are_ok_or_invalid_argument(fuzz_rig: ProcessRig, scale: Scale) -> None:
    answers: dict[str, int] = {}

    @_settings(scale, scale.fuzz_examples)
    @given(message=requests())
    def one(message: pb.GenerateRequest) -> None:
        result = fuzz_rig.call(message, timeout=30)
        answers[result.outcome] = answers.get(result.outcome, 0) + 1
        _check_answer(result)

    start = time.monotonic()
    with canary(fuzz_rig) as runs:
        one()
    took = time.monotonic() - start
    print(f"\nfuzzed requests: {answers} in {took:.0f} s; canary runs: {len(runs)}")
    assert answers.get("ok") and answers.get("invalid_argument"), answers  # both were reached
    assert len(runs) >= 1


def test_invalid_utf8_and_arbitrary_bytes_are_invalid_argument(
    fuzz_rig: ProcessRig, scale: Scale
) -> None:
    @_settings(scale, max(50, scale.fuzz_examples // 10))
    @given(body=invalid_utf8_requests())
    def bad_utf8(body: bytes) -> None:
        result = _raw_call(fuzz_rig, body)
        assert result.outcome == "invalid_argument", (result.outcome, result.details)
        assert result.details.startswith("request: ")

    @_settings(scale, max(50, scale.fuzz_examples // 10))
    @given(body=st.binary(max_size=300))
    def arbitrary(body: bytes) -> None:
        _check_answer(_raw_call(fuzz_rig, body))

    with canary(fuzz_rig):
        bad_utf8()
        arbitrary()
    describe = fuzz_rig.channel.unary_unary(
        "/steering.v1.SteeringService/DescribeModel", request_serializer=None
    )
    with pytest.raises(grpc.RpcError) as err:
        describe(b"\xff\xff\xff", timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_huge_prompt_is_refused_without_stalling_the_server(fuzz_rig: ProcessRig) -> None:
    """A prompt near the message size limit is refused before it is tokenized, off the event
    loop; one over the limit is refused by gRPC itself (RESOURCE_EXHAUSTED, its convention:
    the server's handlers never see it, so it is in no counter)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(fuzz_rig.channel)
    huge = gen("the sea and the sky " * 200_000, rid="huge")  # 4 MB, just under the limit
    with canary(fuzz_rig):
        result = fuzz_rig.call(huge, timeout=30)
        assert result.outcome == "invalid_argument" and result.details.startswith("prompt: ")
        assert result.seconds < 2.0
        check = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        chat = gen(chat=[("user", "the sea " * 400_000)], rid="huge-chat")
        result = fuzz_rig.call(chat, timeout=30)
        assert result.outcome == "invalid_argument", result.details
        assert result.details.startswith("chat.messages: ")
    over = gen("x" * (5 * 1024 * 1024), rid="over")
    with pytest.raises(grpc.RpcError) as err:
        list(fuzz_rig.stub.Generate(over, timeout=30))
    assert outcome_of(err.value.code()) == "resource_exhausted"
