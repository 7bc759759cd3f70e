"""OpenAI's log-probabilities through the official `openai` SDK: chat's `logprobs` /
`top_logprobs` and the legacy completions' `logprobs: N`, whole and streamed, against a plain
greedy forward of the text through a separately loaded model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2 as httpx  # the HTTP client the `openai` SDK brings
import pytest
import torch

from steering import load_model
from steering.requests import ChatMessage, TextRequest
from tests.server.harness import ServerThread
from tests.server.http_api.conftest import base_url

N = 6
PROMPT = "The sea was calm and the boat"
CHAT = [{"role": "user", "content": "Tell me of the sea."}]


def _reference(srv: ServerThread, ids: list[int]) -> list[tuple[int, torch.Tensor]]:
    """N greedy tokens after `ids`, each with log_softmax of the logits that chose it."""
    lm = load_model(Path(srv.settings.model), dtype=torch.float32)
    ids, out = list(ids), []
    with torch.no_grad():
        for _ in range(N):
            logits = lm.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            token = int(logprobs.argmax())
            out.append((token, logprobs))
            ids.append(token)
    return out


def _prompt_ids(srv: ServerThread, chat: bool) -> list[int]:
    frontend = srv.app.frontend
    assert frontend is not None
    if chat:
        messages = tuple(ChatMessage(m["role"], m["content"]) for m in CHAT)
        return list(frontend.tokenize(TextRequest(chat=messages)))
    return list(frontend.tokenize(TextRequest(prompt=PROMPT)))


def _text(srv: ServerThread, token: int) -> str:
    assert srv.app.frontend is not None
    return str(srv.app.frontend.tokenizer.decode([token]))


def _create(client: Any, model: str, chat: bool, stream: bool, **extra: Any) -> list[Any]:
    common: dict[str, Any] = {
        "model": model, "max_tokens": N, "temperature": 0, "extra_body": {"ignore_eos": True},
    }  # fmt: skip
    if chat:
        answer = client.chat.completions.create(messages=CHAT, stream=stream, **common, **extra)
    else:
        answer = client.completions.create(prompt=PROMPT, stream=stream, **common, **extra)
    return [c.to_dict() for c in answer] if stream else [answer.to_dict()]


def _chat_content(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    shapes = [c.get("logprobs") or {} for p in parts for c in p["choices"]]
    return [t for shape in shapes for t in shape.get("content") or []]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_chat_logprobs_equal_a_plain_forward(
    http_server: ServerThread, client: Any, model_name: str, stream: bool
) -> None:
    parts = _create(client, model_name, True, stream, logprobs=True, top_logprobs=4)
    content = _chat_content(parts)
    expected = _reference(http_server, _prompt_ids(http_server, chat=True))
    assert len(content) == N
    for got, (token, logprobs) in zip(content, expected, strict=True):
        assert got["token"] == _text(http_server, token)
        assert got["bytes"] == list(got["token"].encode())
        assert got["logprob"] == pytest.approx(float(logprobs[token]), abs=1e-3)
        values, ids = logprobs.topk(4)
        assert [t["token"] for t in got["top_logprobs"]] == [_text(http_server, i) for i in ids]
        assert [t["logprob"] for t in got["top_logprobs"]] == pytest.approx(
            values.tolist(), abs=1e-3
        )


def test_chat_without_logprobs_has_none(client: Any, model_name: str) -> None:
    whole = _create(client, model_name, True, False)[0]
    assert whole["choices"][0].get("logprobs") is None
    zero = _create(client, model_name, True, False, logprobs=True)[0]
    content = zero["choices"][0]["logprobs"]["content"]
    assert len(content) == N and all(t["top_logprobs"] == [] for t in content)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_completion_logprobs_in_the_legacy_shape(
    http_server: ServerThread, client: Any, model_name: str, stream: bool
) -> None:
    parts = _create(client, model_name, False, stream, logprobs=3)
    shapes = [c["logprobs"] for p in parts for c in p["choices"] if c.get("logprobs")]
    joined: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                                    "text_offset": []}  # fmt: skip
    for shape in shapes:
        for key in joined:
            joined[key] += shape[key]
    text = "".join(c["text"] for p in parts for c in p["choices"])
    expected = _reference(http_server, _prompt_ids(http_server, chat=False))
    assert joined["tokens"] == [_text(http_server, t) for t, _ in expected]
    offset = 0
    for i, (token, logprobs) in enumerate(expected):
        assert joined["token_logprobs"][i] == pytest.approx(float(logprobs[token]), abs=1e-3)
        values, ids = logprobs.topk(3)
        top: dict[str, float] = {}
        for t, v in zip(ids.tolist(), values.tolist(), strict=True):
            top.setdefault(_text(http_server, t), v)  # two tokens may decode alike
        assert list(joined["top_logprobs"][i]) == list(top)  # most likely first
        assert list(joined["top_logprobs"][i].values()) == pytest.approx(list(top.values()), 1e-3)
        assert joined["text_offset"][i] == offset
        offset += len(joined["tokens"][i])
    assert "".join(joined["tokens"]) == text


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": 3}, "logprobs"),
        ("/v1/completions", {"logprobs": 21}, "logprobs"),
        ("/v1/completions", {"logprobs": -1}, "logprobs"),
    ],
)
def test_bad_logprobs_are_400_naming_the_field(
    http_server: ServerThread, model_name: str, path: str, body: dict[str, Any], param: str
) -> None:
    base = {"model": model_name, "max_tokens": 2}
    base |= {"messages": CHAT} if "chat" in path else {"prompt": PROMPT}
    response = httpx.post(base_url(http_server) + path, json=base | body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_limits_body_holds_max_top_logprobs(http_server: ServerThread) -> None:
    limits = httpx.get(base_url(http_server) + "/v1/steering/model", timeout=30).json()["limits"]
    assert limits["max_top_logprobs"] == 20
