"""Every error status of the HTTP edge in OpenAI's envelope, `param` the body path; a client
that leaves aborts its row; the steering routes, health and the OpenAPI document."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx  # the HTTP client the `openai` SDK brings
import openai
import pytest

from tests.server.harness import ServerThread
from tests.server.http_api.conftest import base_url

PROMPT = "The sea was calm"


def _post(srv: ServerThread, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(base_url(srv) + path, json=body, **({"timeout": 30} | kwargs))


def _error(response: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    return dict(error)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"echo": True}, "echo"),
        ({"best_of": 3}, "best_of"),
        ({"suffix": "x"}, "suffix"),
        ({"logit_bias": {"5": 3}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"max_tokens": 10**6}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 2}, "top_p"),
        ({"stop": ["x"] * 99}, "stop"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": " "}, "prompt"),
        ({"steering": {"edits": ["gs1:99999=set:1"]}}, "steering.edits[0].feature"),
        ({"steering": {"edits": ["nope:1=set:1"]}}, "steering.edits[0].sae"),
        ({"steering": {"edits": ["gs1:1=sett:1"]}}, "steering.edits[0]"),
        ({"steering": {"edits": [{"sae": "gs1", "feature": 1, "mode": "x"}]}},
         "steering.edits[0].mode"),
        ({"steering": {"edits": ["gs1:1=set:1e9"]}}, "steering.edits[0].value"),
        ({"steering": {"watch": ["gs1:1", "gs9:1"]}}, "steering.watch[1].sae"),
        ({"steering": {"preset": "stormy"}}, "steering.preset"),
        ({"steering": {"rules": [{"when": "gs1:1", "above": 1.0}]}}, "steering.rules[0]"),
        ({"steering": {"rules": [{"when": "gs1:1", "above": 1,
                                  "apply": ["gs1:1=set:1", "gs2:999=add:1"]}]}},
         "steering.rules[0].apply[1].feature"),
        ({"steering": {"unknown": 1}}, "steering.unknown"),
    ],
)  # fmt: skip
def test_bad_completions_are_400_naming_the_body_path(
    http_server: ServerThread, model_name: str, body: dict[str, Any], param: str
) -> None:
    request = {"model": model_name, "prompt": PROMPT, "max_tokens": 4} | body
    error = _error(_post(http_server, "/v1/completions", request), 400, param)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("messages", "extra", "param"),
    [
        ([{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}], {},
         "messages[1].role"),
        ([], {}, "messages"),
        ([{"role": "user", "content": [{"type": "image_url", "text": ""}]}], {},
         "messages[0].content[0].type"),
        ([{"role": "user", "content": "hi"}], {"tools": [{"type": "function"}]}, "tools"),
        ([{"role": "user", "content": "hi"}], {"response_format": {"type": "json_object"}},
         "response_format"),
        ([{"role": "user", "content": "hi"}], {"max_completion_tokens": 10**6}, "max_tokens"),
    ],
)  # fmt: skip
def test_bad_chats_are_400_naming_the_body_path(
    http_server: ServerThread, model_name: str, messages: Any, extra: Any, param: str
) -> None:
    request = {"model": model_name, "messages": messages} | extra
    _error(_post(http_server, "/v1/chat/completions", request), 400, param)


def test_chat_content_parts_are_joined(client: Any, model_name: str) -> None:
    parts = [{"type": "text", "text": "Tell me"}, {"type": "text", "text": "of the sea."}]
    whole = {"role": "user", "content": "Tell me\nof the sea."}
    answers = [
        client.chat.completions.create(model=model_name, messages=[m], max_tokens=6, temperature=0)
        .choices[0]
        .message.content
        for m in ({"role": "user", "content": parts}, whole)
    ]
    assert answers[0] == answers[1]


def test_malformed_json_is_400(http_server: ServerThread) -> None:
    response = httpx.post(
        base_url(http_server) + "/v1/completions",
        content=b'{"model": ',
        headers={"content-type": "application/json"},
    )
    _error(response, 400, None)


def test_a_body_over_the_limit_is_413(http_server: ServerThread, model_name: str) -> None:
    body = {"model": model_name, "prompt": "x" * (5 * 1024 * 1024)}
    _error(_post(http_server, "/v1/completions", body), 413, None)


def test_a_chunked_body_over_the_limit_is_413(http_server: ServerThread, model_name: str) -> None:
    """No Content-Length: the body is counted as it arrives and refused past the limit."""
    body = json.dumps({"model": model_name, "prompt": "x" * (5 * 1024 * 1024)}).encode()
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
    response = httpx.post(
        base_url(http_server) + "/v1/completions",
        content=chunks,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert _error(response, 413, None)["code"] == "too_large"


@pytest.mark.parametrize(
    "content",
    [
        b'{"model": "MODEL", "prompt": "\\ud800 sea"}',  # valid JSON, but no Unicode text
        b"[" * 5000 + b"]" * 5000,  # deeper than the parser goes
    ],
)
def test_lone_surrogates_and_too_deep_bodies_are_400_and_counted(
    http_server: ServerThread, model_name: str, content: bytes
) -> None:
    key = 'steering_requests_total{outcome="invalid_argument"}'
    before = http_server.metrics().get(key, 0)
    response = httpx.post(
        base_url(http_server) + "/v1/completions",
        content=content.replace(b"MODEL", model_name.encode()),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    _error(response, 400, None)
    assert http_server.metrics_reaching(key, before + 1)[key] == before + 1


def test_unknown_model_and_route_are_404(client: Any, http_server: ServerThread) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="gpt-9", prompt=PROMPT)
    assert caught.value.body["code"] == "model_not_found"
    assert caught.value.body["param"] == "model"
    _error(httpx.get(base_url(http_server) + "/v1/nothing"), 404, None)


@pytest.fixture(scope="module")
def guarded(model_folders: dict[str, Path]) -> Iterator[ServerThread]:
    """One row, no queue, a token: for 401, 429 and disconnects."""
    srv = ServerThread(
        model=model_folders["gemma2"],
        auth_tokens=["s3cret"],
        max_active_rows=1,
        max_queued_requests=0,
        max_new_tokens=4000,
    )
    yield srv
    srv.close()


def _sdk(srv: ServerThread, key: str = "s3cret") -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url(srv) + "/v1", api_key=key, max_retries=0)


def test_a_missing_or_wrong_token_is_401_and_health_stays_open(guarded: ServerThread) -> None:
    with pytest.raises(openai.AuthenticationError):
        _sdk(guarded, "wrong").models.list()
    body = {"model": "gemma2", "prompt": PROMPT}
    _error(_post(guarded, "/v1/completions", body), 401, None)  # no token at all
    assert guarded.metrics()['steering_requests_total{outcome="unauthenticated"}'] == 1
    assert httpx.get(base_url(guarded) + "/health").status_code == 200
    assert [m.id for m in _sdk(guarded).models.list()] == ["gemma2"]


def _running(srv: ServerThread) -> float:
    return srv.metrics().get("steering_requests_running", -1.0)


def test_queue_full_is_429_at_once_and_a_disconnect_frees_the_row(guarded: ServerThread) -> None:
    body = {"model": "gemma2", "prompt": PROMPT, "max_tokens": 4000, "ignore_eos": True}
    headers = {"authorization": "Bearer s3cret"}
    with httpx.stream(
        "POST", base_url(guarded) + "/v1/completions", json=body | {"stream": True},
        headers=headers, timeout=60,
    ) as stream:  # fmt: skip
        lines = stream.iter_lines()
        assert next(lines).startswith("data: ")  # the row is running
        assert _running(guarded) == 1
        response = _post(guarded, "/v1/completions", body, headers=headers)
        error = _error(response, 429, None)
        assert error["code"] == "queue_full"
    # The client left mid-stream: its row is aborted.
    end = time.monotonic() + 10
    while _running(guarded) != 0 and time.monotonic() < end:
        time.sleep(0.02)
    assert _running(guarded) == 0
    guarded.wait_idle()
    samples = guarded.metrics()
    assert samples['steering_requests_total{outcome="resource_exhausted"}'] >= 1
    assert samples['steering_requests_total{outcome="cancelled"}'] >= 1


def test_a_whole_answer_whose_client_leaves_frees_the_row(guarded: ServerThread) -> None:
    body = {"model": "gemma2", "prompt": PROMPT, "max_tokens": 4000, "ignore_eos": True}
    headers = {"authorization": "Bearer s3cret"}

    cancelled = 'steering_requests_total{outcome="cancelled"}'
    before = guarded.metrics()[cancelled]
    left: list[BaseException] = []

    def call() -> None:
        try:
            _post(guarded, "/v1/completions", body, headers=headers, timeout=httpx.Timeout(1.0))
        except Exception as exc:  # the client gives up before the answer
            left.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    end = time.monotonic() + 10
    while _running(guarded) != 1 and time.monotonic() < end:
        time.sleep(0.01)
    thread.join(10)
    assert left and isinstance(left[0], httpx.TimeoutException), left
    end = time.monotonic() + 10
    while _running(guarded) != 0 and time.monotonic() < end:
        time.sleep(0.02)
    assert _running(guarded) == 0
    assert guarded.metrics()[cancelled] == before + 1  # aborted, not run to its end


def test_http_calls_are_counted_by_route_template(http_server: ServerThread, client: Any) -> None:
    before = http_server.metrics()
    client.models.retrieve("gemma2")
    httpx.get(base_url(http_server) + "/v1/nothing/here")
    after = http_server.metrics()
    key = 'steering_http_requests_total{route="/v1/models/{model:path}",status="200"}'
    assert after[key] == before.get(key, 0) + 1
    unmatched = 'steering_http_requests_total{route="unmatched",status="404"}'
    assert after[unmatched] == before.get(unmatched, 0) + 1
    assert not any("gemma2" in k or "nothing" in k for k in after)


def test_steering_routes_answer_as_grpc(http_server: ServerThread) -> None:
    from steering_proto.v1 import steering_pb2 as pb

    url = base_url(http_server)
    described = httpx.get(url + "/v1/steering/model").json()
    assert [s["name"] for s in described["saes"]] == ["gs1", "gs2", "lens"]
    assert described["presets"][0]["name"] == "calm"
    inspect = {"prompt": PROMPT, "top_k": 3, "features": ["gs1:3"], "edits": ["gs2:1=set:2"]}
    tokens = _post(http_server, "/v1/steering/inspect", inspect).json()["tokens"]
    grpc = http_server.stub.Inspect(
        pb.InspectRequest(
            prompt=PROMPT, top_k=3, features=[pb.FeatureRef(sae="gs1", feature=3)],
            edits=[pb.FeatureEdit(sae="gs2", feature=1, mode=pb.EDIT_MODE_SET, value=2)],
        )
    )  # fmt: skip
    assert [t["token_id"] for t in tokens] == [t.token_id for t in grpc.tokens]
    assert [[f["feature"] for f in t["top"]] for t in tokens] == [
        [f.feature for f in t.top] for t in grpc.tokens
    ]
    lean = {"prompt": PROMPT, "features": ["gs1:3"], "no_top": True}
    lean_tokens = _post(http_server, "/v1/steering/inspect", lean).json()["tokens"]
    lean_grpc = http_server.stub.Inspect(
        pb.InspectRequest(
            prompt=PROMPT, features=[pb.FeatureRef(sae="gs1", feature=3)], no_top=True
        )
    )
    assert all(not t["top"] for t in lean_tokens) and all(not t.top for t in lean_grpc.tokens)
    assert [[f["activation"] for f in t["features"]] for t in lean_tokens] == [
        [f.activation for f in t.features] for t in lean_grpc.tokens
    ]
    contrast = {"a": ["the sea"], "b": ["a desk"], "top_k": 2}
    answer = _post(http_server, "/v1/steering/contrast", contrast).json()
    assert len(answer["toward_a"]) == 2
    bad = _post(http_server, "/v1/steering/inspect", {"prompt": PROMPT, "saes": ["zz"]})
    _error(bad, 400, "saes[0]")
    _error(_post(http_server, "/v1/steering/search", {"query": " "}), 400, "query")


def test_openapi_describes_every_route_and_no_docs_page_loads_a_cdn(
    http_server: ServerThread,
) -> None:
    paths = httpx.get(base_url(http_server) + "/openapi.json").json()["paths"]
    for route in ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health",
                  "/v1/steering/model", "/v1/steering/inspect", "/v1/steering/search",
                  "/v1/steering/contrast"):  # fmt: skip
        assert route in paths
    for page in ("/docs", "/redoc"):
        assert httpx.get(base_url(http_server) + page).status_code == 404


def test_loading_and_draining_are_503(model_folders: dict[str, Path]) -> None:
    srv = ServerThread(model=model_folders["gemma2"])
    try:
        url = base_url(srv)
        assert httpx.get(url + "/health").json() == {"status": "serving"}
        assert srv.app.frontend is not None
        srv.app.frontend.close()  # what a drain does first
        assert httpx.get(url + "/health").status_code == 503
        body = {"model": "gemma2", "prompt": PROMPT}
        error = _error(_post(srv, "/v1/completions", body), 503, None)
        assert error["code"] == "unavailable"
        assert httpx.get(url + "/v1/steering/model").status_code == 503
    finally:
        srv.close()
