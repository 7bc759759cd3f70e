"""The reliability scenarios over HTTP: fuzzed, malformed and huge bodies are answered with the
expected 4xx (never a 500), a slow reader slows no other stream, a disconnect storm leaves the
server idle with its counters equal to what clients saw, and a canary greedy stream stays equal
to its solo run throughout. SIGTERM with an HTTP stream in flight drains the real process."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx  # the HTTP client the `openai` SDK brings
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.conftest import RIGS, Scale
from tests.reliability.process import FUZZ_MAX_NEW_TOKENS, ProcessRig, ServerProcess, fuzz_server
from tests.reliability.rig import Client, Rig

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
GENERATE = (COMPLETIONS, CHAT)
# The outcome `steering_requests_total` counts for a completion answered with each status
# (a 413 is refused before the call exists, as gRPC refuses a message over its limit).
OUTCOME = {
    200: "ok",
    400: "invalid_argument",
    401: "unauthenticated",
    404: "invalid_argument",
    429: "resource_exhausted",
    503: "unavailable",
}
ERROR_OUTCOME = {  # an error event inside a stream, by its `type`
    "invalid_request_error": "invalid_argument",
    "rate_limit_error": "resource_exhausted",
    "service_unavailable": "unavailable",
    "server_error": "internal",
}
MAX_NEW_TOKENS = FUZZ_MAX_NEW_TOKENS


@dataclass
class Answer:
    """One HTTP call as its client saw it."""

    status: int
    body: Any = None  # the JSON answer (not streamed)
    events: list[Any] = field(default_factory=list)  # the streamed `data:` events, decoded
    done: bool = False  # `data: [DONE]` arrived
    outcome: str = ""

    @property
    def text(self) -> str:
        if self.events:
            return "".join(_piece(e) for e in self.events)
        return _piece(self.body) if isinstance(self.body, dict) else ""

    @property
    def error(self) -> dict[str, Any] | None:
        for event in [self.body, *self.events]:
            if isinstance(event, dict) and isinstance(event.get("error"), dict):
                return event["error"]
        return None


def _piece(chunk: dict[str, Any]) -> str:
    out = []
    for choice in chunk.get("choices") or []:
        if "text" in choice:
            out.append(choice["text"] or "")
        elif "delta" in choice:
            out.append(choice["delta"].get("content") or "")
        elif "message" in choice:
            out.append(choice["message"].get("content") or "")
    return "".join(out)


class Http:
    """HTTP calls to one server; completions land in its client's ledger as the server counts
    them (`OUTCOME`)."""

    def __init__(self, client: Client, port: int) -> None:
        self.client = client
        self.base = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.base, timeout=120)
        self._references: dict[str, Answer] = {}

    def close(self) -> None:
        self.http.close()

    def call(
        self,
        route: str,
        body: Any = None,
        *,
        content: Any = None,
        on_event: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """POST a body (JSON, or raw `content`), read to the end; completions are recorded."""
        kwargs: dict[str, Any] = {"content": content} if content is not None else {"json": body}
        hdrs = {"content-type": "application/json", **(headers or {})}
        with self.http.stream("POST", route, headers=hdrs, **kwargs) as response:
            answer = Answer(response.status_code)
            streamed = response.headers.get("content-type", "").startswith("text/event-stream")
            if streamed:
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        answer.done = True
                        continue
                    answer.events.append(json.loads(line.removeprefix("data: ")))
                    if on_event is not None:
                        on_event(len(answer.events) - 1, answer.events[-1])
            else:
                response.read()
                answer.body = response.json() if response.content else None
        error = answer.error
        if answer.status == 200 and error is not None:
            answer.outcome = ERROR_OUTCOME.get(error.get("type"), "internal")
        else:
            answer.outcome = OUTCOME.get(answer.status, "internal")
        if route in GENERATE and answer.status != 413:
            self.client.record(answer.outcome)
        return answer

    def reference(self, route: str, body: dict[str, Any]) -> Answer:
        """The call's answer when it runs alone (greedy: the same whatever else runs)."""
        key = route + json.dumps(body, sort_keys=True)
        if key not in self._references:
            self.client.wait_idle()
            answer = self.call(route, body)
            assert answer.status == 200 and answer.error is None, answer
            self._references[key] = answer
        return self._references[key]


def _model(rig: Client, http: Http) -> str:
    return str(http.http.get("/v1/models").json()["data"][0]["id"])


@pytest.fixture(scope="module")
def http(rig: Rig) -> Iterator[Http]:
    client = Http(rig, rig.srv.app.http_port)
    yield client
    client.close()


# ---- the canary -----------------------------------------------------------------------------


def _canaries(model: str) -> list[tuple[str, dict[str, Any]]]:
    steering = {"edits": ["res:5=set:30", {"sae": "deep", "feature": 3, "mode": "add",
                                           "value": -12.0}]}  # fmt: skip
    common = {"model": model, "max_tokens": 120, "temperature": 0, "ignore_eos": True,
              "stream": True}  # fmt: skip
    return [
        (COMPLETIONS, {**common, "prompt": "The canary sings of the sea"}),
        (CHAT, {**common, "messages": [{"role": "user", "content": "Sing, canary"}],
                "steering": steering}),
    ]  # fmt: skip


@contextmanager
def canary(http: Http, model: str, max_runs: int = 10_000) -> Iterator[list[Answer]]:
    """Greedy canary streams over HTTP, one after another, for as long as the block runs; each
    must equal its solo run exactly."""
    canaries = _canaries(model)
    references = [http.reference(route, body) for route, body in canaries]
    runs: list[Answer] = []
    stop = threading.Event()

    def sing() -> None:
        while not stop.is_set() and len(runs) < max_runs:
            i = len(runs) % len(canaries)
            answer = http.call(*canaries[i])
            runs.append(answer)
            if answer.text != references[i].text or answer.status != 200:
                return  # reported below
            stop.wait(0.05)

    thread = threading.Thread(target=sing, daemon=True)
    thread.start()
    try:
        yield runs
    finally:
        stop.set()
        thread.join(120)
    assert runs, "the canary never sang"
    for i, run in enumerate(runs):
        reference = references[i % len(canaries)]
        assert run.status == 200 and run.error is None and run.done, run
        assert run.text == reference.text, f"canary run {i}: {run.text!r} != {reference.text!r}"


# ---- fuzzed bodies --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_fuzz_rig(
    model_folders: dict[str, Path],
    sae_specs_reliability: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProcessRig]:
    """The real process (the fuzzer's memory is then not the server's), with tight limits."""
    folder = tmp_path_factory.mktemp("http-fuzz")
    rig = fuzz_server(
        model_folders["gemma2"], sae_specs_reliability, folder, max_message_bytes=64 * 1024
    )
    RIGS.append(rig)
    yield rig
    rig.close()


@pytest.fixture(scope="module")
def fuzz_http(http_fuzz_rig: ProcessRig) -> Iterator[Http]:
    client = Http(http_fuzz_rig, http_fuzz_rig.server.http_port)
    yield client
    client.close()


SPECIAL = ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "\x00", "\ufeff", "é", "🌊"]
TEXT = st.text(st.characters(codec="utf-8"), max_size=24) | st.sampled_from(SPECIAL)
SCALAR = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
SAE = st.sampled_from(["res", "deep", "nope", ""])
FEATURE = st.integers(-2, 140) | st.sampled_from([2**31, 2**63])
VALUE = st.floats(-1e5, 1e5, allow_nan=False) | st.sampled_from([1e300, -1e300])
MODE = st.sampled_from(["set", "add", "scale", "ablate", "SET", "mul"])
EDIT = (
    st.builds(
        lambda sae, f, m, v, a: f"{sae}:{f}={m}:{v}" + ("@active" if a else ""),
        SAE, FEATURE, MODE, VALUE, st.booleans(),
    )
    | st.fixed_dictionaries(
        {"sae": SAE, "feature": FEATURE, "mode": MODE},
        optional={"value": VALUE, "only_when_active": st.booleans()},
    )
    | TEXT
)  # fmt: skip
REF = st.builds(lambda sae, f: f"{sae}:{f}", SAE, FEATURE) | st.fixed_dictionaries(
    {"sae": SAE, "feature": FEATURE}
)
RULE = st.fixed_dictionaries(
    {"when": REF, "above": VALUE},
    optional={"apply": st.lists(EDIT, max_size=3), "stop": st.booleans()},
)
STEERING = st.fixed_dictionaries(
    {},
    optional={
        "edits": st.lists(EDIT, max_size=9),
        "preset": st.sampled_from(["", "calm", "nope"]),
        "watch": st.lists(REF, max_size=5),
        "rules": st.lists(RULE, max_size=5),
    },
)
MAX_TOKENS = st.integers(-1, 3) | st.sampled_from([MAX_NEW_TOKENS + 1, 2**40])
SAMPLING = {
    "max_tokens": MAX_TOKENS,
    "temperature": st.sampled_from([0, 0.5, 1.0, -1, 1e9]),
    "top_p": st.sampled_from([0, 0.5, 1, 1.5]),
    "top_k": st.integers(-1, 12),
    "seed": st.integers(-1, 2**64),
    "stop": TEXT | st.lists(TEXT, max_size=6),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "ignore_eos": st.booleans(),
    "n": st.integers(0, 3),
    "logprobs": st.none() | st.booleans() | st.integers(0, 3),
    "presence_penalty": st.sampled_from([0, 0.0, 1.5]),
    "user": TEXT,
    "steering": STEERING,
}
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "model", "tool", "x"])},
    optional={
        "content": TEXT
        | st.lists(
            st.fixed_dictionaries({"type": st.sampled_from(["text", "image"]), "text": TEXT}),
            max_size=2,
        )
    },
)


@st.composite
def _mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> Any:
    """A plausible body, then up to three of its fields (or the whole) replaced by any JSON."""
    body = draw(base)
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(body)) | TEXT) if body else draw(TEXT)
        body[key] = draw(JSON)
    return body


def _completion(model: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"model": st.just(model) | TEXT, "prompt": TEXT | st.lists(TEXT, max_size=2)},
        optional=SAMPLING,
    )


def _chat(model: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"model": st.just(model) | TEXT, "messages": st.lists(MESSAGE, max_size=3)},
        optional={**SAMPLING, "max_completion_tokens": MAX_TOKENS},
    )


INSPECT = st.fixed_dictionaries(
    {},
    optional={
        "prompt": TEXT,
        "chat": st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=2)}),
        "saes": st.lists(SAE, max_size=3),
        "top_k": st.integers(-1, 12),
        "features": st.lists(REF, max_size=5),
        "edits": st.lists(EDIT, max_size=3),
    },
)
SEARCH = st.fixed_dictionaries({"query": TEXT}, optional={"sae": SAE, "limit": st.integers(-1, 9)})
CONTRAST = st.fixed_dictionaries(
    {"a": st.lists(TEXT, max_size=5), "b": st.lists(TEXT, max_size=5)},
    optional={"sae": SAE, "top_k": st.integers(-1, 12)},
)


def _routes(model: str) -> st.SearchStrategy[tuple[str, Any]]:
    return st.one_of(
        st.tuples(st.just(COMPLETIONS), _mutated(_completion(model))),
        st.tuples(st.just(CHAT), _mutated(_chat(model))),
        st.tuples(st.just("/v1/steering/inspect"), _mutated(INSPECT)),
        st.tuples(st.just("/v1/steering/search"), _mutated(SEARCH)),
        st.tuples(st.just("/v1/steering/contrast"), _mutated(CONTRAST)),
    )


EXPECTED = {200, 400, 404}  # 404: a model not served (completions only)


def _check_answer(route: str, answer: Answer) -> None:
    assert answer.status in EXPECTED, answer
    if answer.status == 404:
        assert route in GENERATE and answer.error and answer.error["code"] == "model_not_found"
    if answer.status != 200:
        error = answer.error
        assert error is not None and set(error) == {"message", "type", "param", "code"}, answer
        return
    error = answer.error
    assert error is None or error["type"] != "server_error", answer
    if answer.events:
        assert answer.done or error is not None, "a stream that ended without [DONE]"


def test_fuzzed_bodies_are_answered_200_or_4xx_never_500(
    http_fuzz_rig: ProcessRig, fuzz_http: Http, scale: Scale
) -> None:
    """Fuzzed JSON bodies to every POST route, with a canary stream beside them."""
    model = _model(http_fuzz_rig, fuzz_http)
    statuses: dict[int, int] = {}

    @settings(
        max_examples=scale.fuzz_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(_routes(model))
    def one(case: tuple[str, Any]) -> None:
        route, body = case
        answer = fuzz_http.call(route, body)
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
        _check_answer(route, answer)

    with canary(fuzz_http, model):
        one()
    assert statuses.get(200) and statuses.get(400), statuses  # both reached, not one alone


MALFORMED = [
    b"",
    b"{",
    b'{"model": ',
    b"nul\x00l",
    b"\xff\xfe{}",
    b'{"model": "MODEL", "prompt": "\\ud800"}',  # valid JSON, not a valid string
    b'{"model": "MODEL", "messages": [{"role": "user", "content": "\\udfff"}]}',
    b'{"model": "x",, "prompt": "a"}',
    b"[" * 5000 + b"]" * 5000,
    b'{"prompt": NaN}',
    b"'single'",
]


@pytest.mark.parametrize("route", [COMPLETIONS, CHAT, "/v1/steering/inspect",
                                   "/v1/steering/search", "/v1/steering/contrast"])  # fmt: skip
def test_malformed_json_is_400(http_fuzz_rig: ProcessRig, fuzz_http: Http, route: str) -> None:
    model = _model(http_fuzz_rig, fuzz_http).encode()
    for content in MALFORMED:
        content = content.replace(b"MODEL", model)
        answer = fuzz_http.call(route, content=content)
        assert answer.status == 400, (content[:40], answer)
        assert answer.error is not None and answer.error["type"] == "invalid_request_error"


def test_huge_bodies_are_413_with_or_without_a_length(
    http_fuzz_rig: ProcessRig, fuzz_http: Http
) -> None:
    """Over max_message_bytes (64 KiB here): 413, whether the client says its length or streams
    the body in chunks without one; just under it is read and answered."""
    model = _model(http_fuzz_rig, fuzz_http)
    limit = 64 * 1024
    huge = json.dumps({"model": model, "prompt": "sea " * limit}).encode()

    def chunks(data: bytes, size: int = 4096) -> Iterator[bytes]:
        for i in range(0, len(data), size):
            yield data[i : i + size]

    for route in (COMPLETIONS, CHAT, "/v1/steering/inspect"):
        assert fuzz_http.call(route, content=huge).status == 413
        answer = fuzz_http.call(route, content=chunks(huge))  # chunked: no Content-Length
        assert answer.status == 413, answer
        assert answer.error is not None and answer.error["code"] == "too_large"
    # Just under the limit, chunked: read whole, then refused for its prompt's length (400).
    under = json.dumps({"model": model, "prompt": "sea " * (limit // 5)}).encode()
    assert len(under) < limit
    assert fuzz_http.call(COMPLETIONS, content=chunks(under)).status == 400


# ---- slow readers, disconnect storms, the canary --------------------------------------------


def _others(model: str) -> list[tuple[str, dict[str, Any]]]:
    common = {"model": model, "max_tokens": 48, "temperature": 0, "ignore_eos": True,
              "stream": True}  # fmt: skip
    return [
        (COMPLETIONS, {**common, "prompt": "Tell me about the sea"}),
        (CHAT, {**common, "messages": [{"role": "user", "content": "Hi"}],
                "steering": {"edits": ["res:5=set:30"]}}),
        (COMPLETIONS, {**common, "prompt": "A small bird sang",
                       "steering": {"edits": ["deep:3=add:20"]}}),
        (CHAT, {**common, "messages": [{"role": "user", "content": "Once upon a time"}]}),
    ]  # fmt: skip


def test_a_slow_http_reader_does_not_slow_the_others(rig: Rig, http: Http, scale: Scale) -> None:
    """A stream whose reader stops after its first event: the other streams run to their end
    (equal to their solo runs) meanwhile, the engine finishes the slow one too (it never waits
    for a reader), and the reader, once it reads on, gets its whole answer, equal to its solo
    run."""
    model = _model(rig, http)
    others = _others(model)
    references = [http.reference(*o) for o in others]
    # Long, and every event heavy with watched activations (on loopback the sockets' buffers
    # still hold the whole stream: the server's writes never wait for this reader).
    slow_body = {"model": model, "prompt": "The slow reader", "max_tokens": 480,
                 "temperature": 0, "ignore_eos": True, "stream": True,
                 "steering": {"watch": [f"res:{f}" for f in range(8)]
                              + [f"deep:{f}" for f in range(8)]}}  # fmt: skip
    slow_reference = http.reference(COMPLETIONS, slow_body)
    slow_reads = 6  # then read one per interval, then the rest at once
    read: list[int] = []
    others_done = threading.Event()
    while_paused: list[bool] = []  # [others finished, engine finished] while paused

    def slowly(i: int, event: object) -> None:
        read.append(i)
        if i == 0:
            while_paused.append(others_done.wait(30))
            with suppress(AssertionError):
                rig.wait_until(lambda: rig.engine.idle, timeout=30)
            while_paused.append(bool(rig.engine.idle))
        elif i < slow_reads:
            time.sleep(scale.slow_reader_interval_s)

    with ThreadPoolExecutor(1 + len(others)) as pool:
        slow = pool.submit(http.call, COMPLETIONS, slow_body, on_event=slowly)
        rig.wait_until(lambda: len(read) >= 1)
        results = list(pool.map(lambda o: http.call(*o), others))
        others_done.set()
        slow_answer = slow.result(120)
    assert while_paused[0], "the others waited for the slow reader"
    assert while_paused[1], "the engine waited for the slow reader"
    for answer, reference in zip(results, references, strict=True):
        assert answer.status == 200 and answer.done and answer.text == reference.text
    assert slow_answer.status == 200 and slow_answer.done
    assert slow_answer.text == slow_reference.text


def test_an_http_disconnect_storm_frees_every_row(rig: Rig, http: Http, scale: Scale) -> None:
    """Many streams opened and dropped after their first events, round after round, with a
    canary beside them: every row is freed (running gauge 0), the server counts each dropped
    stream `cancelled`, as its client saw it, and the canary stays exact."""
    model = _model(rig, http)
    n = scale.storm_streams

    def dropped(i: int) -> int:
        body = {"model": model, "prompt": f"Doomed {i}", "max_tokens": 400, "ignore_eos": True,
                "stream": True, "temperature": 0}  # fmt: skip
        with storm.stream("POST", COMPLETIONS, json=body) as response:
            assert response.status_code == 200
            events = 0
            for line in response.iter_lines():
                events += line.startswith("data: ")
                if events >= 1 + i % 3:
                    break  # leave mid-stream: a response left unread closes its connection
        rig.record("cancelled")
        return events

    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    storm = httpx.Client(base_url=http.base, timeout=60, limits=limits)
    with storm, rig.slowed(0.005), canary(http, model):  # 400 tokens take seconds: all leave
        for _ in range(scale.storm_rounds):
            with ThreadPoolExecutor(n) as pool:
                assert all(pool.map(dropped, range(n)))
            rig.wait_until(lambda: rig.srv.metrics()["steering_requests_running"] == 0, 15)
    counted = rig.counters()
    assert counted["cancelled"] >= n * scale.storm_rounds, counted


# ---- drain over HTTP, on the real process ---------------------------------------------------


def test_sigterm_drains_an_http_stream_and_refuses_new_calls(
    model_folders: dict[str, Path], sae_specs_reliability: list[str]
) -> None:
    """SIGTERM with an HTTP stream in flight: /health and new calls answer 503 at once, the
    stream runs to its end (every token, usage, [DONE]), and the process exits 0."""
    server = ServerProcess(
        "--model", str(model_folders["gemma2"]), "--sae", sae_specs_reliability[0],
        "--grace-period", "30",
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{server.http_port}"
        model = httpx.get(base + "/v1/models", timeout=10).json()["data"][0]["id"]
        body = {"model": model, "prompt": "Drain the sea", "max_tokens": 400, "temperature": 0,
                "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        events: list[str] = []
        first = threading.Event()

        def stream() -> int:
            with httpx.stream("POST", base + COMPLETIONS, json=body, timeout=120) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        events.append(line.removeprefix("data: "))
                        first.set()
                return response.status_code

        with ThreadPoolExecutor(1) as pool:
            streaming = pool.submit(stream)
            assert first.wait(60), "the stream never began"
            server.terminate()
            server.wait_for(r"draining")
            assert events[-1] != "[DONE]", "the stream ended before the signal: nothing drained"
            health = httpx.get(base + "/health", timeout=10)
            refused = httpx.post(base + COMPLETIONS, json={**body, "stream": False}, timeout=10)
            status = streaming.result(120)
        assert health.status_code == 503 and health.json() == {"status": "draining"}
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "unavailable"
        assert status == 200 and events[-1] == "[DONE]"
        usage = json.loads(events[-2])["usage"]
        assert usage["completion_tokens"] == 400, usage
        assert server.proc.wait(30) == 0
        assert not server.error_lines(), "".join(server.error_lines())
    finally:
        server.close()
