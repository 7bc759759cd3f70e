"""The OpenAI-compatible routes through the official `openai` SDK: greedy text, usage, finish
reasons, receipts and watched values over HTTP equal gRPC's for the same request; streaming
equals the whole answer; concurrent streams equal their solo runs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from steering.steer.presets import parse_edit
from steering_proto.v1 import steering_pb2 as pb
from steering_server.grpc_api.convert import edit_message
from steering_server.http_api.convert import edit_text
from tests.server.harness import ServerThread

PROMPT = "The sea was calm and the boat"
CASES: dict[str, dict[str, Any]] = {
    "prompt": {},
    "chat": {"chat": [("system", "Be brief."), ("user", "Tell me of the sea.")]},
    "set": {"edits": ["gs1:3=set:4"]},
    "add": {"edits": ["gs2:5=add:-2.5"]},
    "scale": {"edits": ["lens:9=scale:3"]},
    "ablate@active": {"edits": ["gs1:11=ablate@active", "gs2:1=set:2@active"]},
    "edit objects": {"edits": [{"sae": "gs1", "feature": 4, "mode": "add", "value": 1.5}]},
    "preset": {"preset": "calm", "edits": ["gs1:3=add:1"]},
    "watch": {"watch": ["gs1:3", {"sae": "gs2", "feature": 7}]},
    "rules": {
        "rules": [
            {"when": "gs1:5", "above": 0.0, "apply": ["gs1:7=add:3"]},
            {"when": {"sae": "gs2", "feature": 4}, "above": 0.05, "stop": True},
        ],
        "watch": ["gs1:5"],
    },
    "stop string": {"stop": ["e"], "edits": ["gs1:3=set:4"]},
}


def _edit(item: str | dict[str, Any]) -> pb.FeatureEdit:
    if isinstance(item, str):
        return edit_message(parse_edit(item))
    mode = getattr(pb, f"EDIT_MODE_{item['mode'].upper()}")
    return pb.FeatureEdit(sae=item["sae"], feature=item["feature"], mode=mode, value=item["value"])


def _ref(item: str | dict[str, Any]) -> pb.FeatureRef:
    if isinstance(item, str):
        sae, _, feature = item.rpartition(":")
        return pb.FeatureRef(sae=sae, feature=int(feature))
    return pb.FeatureRef(**item)


def grpc_request(case: dict[str, Any], max_tokens: int = 12) -> pb.GenerateRequest:
    request = pb.GenerateRequest(
        sampling=pb.SamplingParams(max_new_tokens=max_tokens, stop=case.get("stop", [])),
        edits=[_edit(e) for e in case.get("edits", [])],
        watch=[_ref(r) for r in case.get("watch", [])],
        preset=case.get("preset", ""),
    )
    for rule in case.get("rules", []):
        message = pb.Rule(when=_ref(rule["when"]), above=rule["above"])
        if rule.get("stop"):
            message.stop = True
        else:
            message.apply.edits.extend(_edit(e) for e in rule["apply"])
        request.rules.append(message)
    if "chat" in case:
        request.chat.messages.extend(pb.ChatMessage(role=r, content=c) for r, c in case["chat"])
    else:
        request.prompt = PROMPT
    return request


def grpc_answer(srv: ServerThread, case: dict[str, Any], max_tokens: int = 12) -> dict[str, Any]:
    replies = srv.generate(grpc_request(case, max_tokens))
    last = replies[-1]
    receipts = [
        (edit_text(_core_edit(r.edit)), r.applied_positions, r.active_positions)
        for r in last.receipts
    ]
    return {
        "text": "".join(r.text for r in replies),
        "usage": (last.usage.prompt_tokens, last.usage.completion_tokens),
        "finish": pb.FinishReason.Name(last.finish_reason).removeprefix("FINISH_REASON_").lower(),
        "receipts": receipts,
        "watched": [list(w.activations) for r in replies for w in r.watched],
    }


def _core_edit(message: pb.FeatureEdit) -> Any:
    from steering_server.grpc_api.convert import _edit as core

    return core(0, message)


def steering_body(case: dict[str, Any]) -> dict[str, Any]:
    return {k: case[k] for k in ("edits", "preset", "watch", "rules") if k in case}


def http_answer(
    client: Any, model: str, case: dict[str, Any], *, stream: bool = False, max_tokens: int = 12
) -> dict[str, Any]:
    """The same request through the SDK: whole, or streamed and put back together."""
    common: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stop": case.get("stop") or None,
        "extra_body": {"steering": steering_body(case)} if steering_body(case) else None,
    }
    chat = "chat" in case
    create = client.chat.completions.create if chat else client.completions.create
    if chat:
        common["messages"] = [{"role": r, "content": c} for r, c in case["chat"]]
    else:
        common["prompt"] = PROMPT
    if not stream:
        answer = create(**common).to_dict()
        choice = answer["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        return _summary(text, answer["usage"], choice["finish_reason"], answer.get("steering"))
    text, steering, finish, usage = "", {"watched": []}, None, None
    for event in create(**common, stream=True, stream_options={"include_usage": True}):
        data = event.to_dict()
        for choice in data["choices"]:
            text += (choice["delta"].get("content") or "") if chat else choice["text"]
            finish = choice.get("finish_reason") or finish
        if data.get("steering"):
            steering["watched"] += data["steering"]["watched"]
            if data["steering"].get("finish_reason"):
                steering["finish_reason"] = data["steering"]["finish_reason"]
                steering["receipts"] = data["steering"]["receipts"]
        usage = data.get("usage") or usage
    return _summary(text, usage, finish, steering if steering_body(case) else None)


def _summary(
    text: str, usage: dict[str, int], finish: str, steering: dict[str, Any] | None
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "text": text,
        "usage": (usage["prompt_tokens"], usage["completion_tokens"]),
        "openai_finish": finish,
    }
    assert usage["total_tokens"] == sum(summary["usage"])
    if steering is not None:
        summary["finish"] = steering["finish_reason"]
        summary["receipts"] = [
            (r["edit"], r["applied_positions"], r["active_positions"]) for r in steering["receipts"]
        ]
        summary["watched"] = [w["activations"] for w in steering["watched"]]
    return summary


def _same(http: dict[str, Any], grpc: dict[str, Any], steered: bool) -> None:
    assert http["text"] == grpc["text"]
    assert http["usage"] == grpc["usage"]
    assert http["openai_finish"] == ("length" if grpc["finish"] == "length" else "stop")
    if steered:
        assert http["finish"] == grpc["finish"]
        assert http["receipts"] == grpc["receipts"]
        _same_activations(http["watched"], grpc["watched"])


def _same_activations(a: list[list[float]], b: list[list[float]]) -> None:
    assert [len(w) for w in a] == [len(w) for w in b]
    flat = [value for values in a for value in values]
    assert flat == pytest.approx([value for values in b for value in values], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_greedy_http_equals_grpc(
    http_server: ServerThread, client: Any, model_name: str, name: str
) -> None:
    case = CASES[name]
    grpc = grpc_answer(http_server, case)
    _same(http_answer(client, model_name, case), grpc, bool(steering_body(case)))


@pytest.mark.parametrize("name", ["prompt", "chat", "watch", "rules", "preset"])
def test_streaming_equals_the_whole_answer(
    http_server: ServerThread, client: Any, model_name: str, name: str
) -> None:
    case = CASES[name]
    whole = http_answer(client, model_name, case)
    streamed = http_answer(client, model_name, case, stream=True)
    assert streamed == whole
    _same(streamed, grpc_answer(http_server, case), bool(steering_body(case)))


def test_eight_concurrent_streams_equal_their_solo_runs(
    http_server: ServerThread, client: Any, model_name: str
) -> None:
    names = ["prompt", "chat", "set", "add", "scale", "preset", "watch", "rules"]
    solo = {n: http_answer(client, model_name, CASES[n], stream=True, max_tokens=20) for n in names}
    with ThreadPoolExecutor(8) as pool:
        together = dict(
            zip(
                names,
                pool.map(
                    lambda n: http_answer(client, model_name, CASES[n], stream=True, max_tokens=20),
                    names,
                ),
                strict=True,
            )
        )
    # Tokens, text, usage and receipts exactly; activations up to float rounding (DESIGN).
    for name in names:
        watched = (together[name].pop("watched", []), solo[name].pop("watched", []))
        assert together[name] == solo[name], name
        _same_activations(*watched)


def test_temperature_omitted_means_one(client: Any, model_name: str) -> None:
    """OpenAI samples at temperature 1 when none is named: seeded runs repeat, and differ from
    greedy for some seed."""
    common = {"model": model_name, "prompt": PROMPT, "max_tokens": 16}
    greedy = client.completions.create(**common, temperature=0).choices[0].text
    sampled = [client.completions.create(**common, seed=s).choices[0].text for s in range(4)]
    assert sampled[0] == client.completions.create(**common, seed=0).choices[0].text
    assert sampled[0] == client.completions.create(**common, seed=0, temperature=1).choices[0].text
    assert any(text != greedy for text in sampled)


def test_models_lists_the_served_model(client: Any, model_name: str) -> None:
    assert [m.id for m in client.models.list()] == [model_name]
    assert client.models.retrieve(model_name).id == model_name


def test_an_answer_without_steering_has_no_steering_object(client: Any, model_name: str) -> None:
    answer = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=4).to_dict()
    assert "steering" not in answer and answer["object"] == "text_completion"
