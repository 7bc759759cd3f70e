"""Generate end to end over gRPC: streamed tokens equal the engine's, text equals the ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from steering import FeatureEdit, SaeAttachment, load_model, load_sae
from steering.engine import Engine
from steering.requests import GenerationRequest, SamplingParams
from steering_proto.v1 import steering_pb2 as pb
from steering_server.grpc_api.convert import MODE_OF
from tests.server.harness import ServerThread, edit, request

CASES = {
    "unsteered": [],
    "set": [edit("gs1", 5, pb.EDIT_MODE_SET, 30.0)],
    "add": [edit("gs2", 3, pb.EDIT_MODE_ADD, 20.0)],
    "scale": [edit("lens", 7, pb.EDIT_MODE_SCALE, 8.0, active=True)],
    "ablate": [edit("gs1", 9, pb.EDIT_MODE_ABLATE)],
    "several SAEs": [
        edit("gs1", 5, pb.EDIT_MODE_SET, 25.0),
        edit("lens", 2, pb.EDIT_MODE_ADD, 15.0),
        edit("gs2", 40, pb.EDIT_MODE_SET, 12.0, active=True),
    ],
}


def _reference(
    srv: ServerThread, prompt_ids: list[int], edits: list[pb.FeatureEdit], n: int
) -> list[int]:
    """The same request through a separate engine on a separately loaded model."""
    lm = load_model(Path(srv.settings.model), dtype=torch.float32)
    attachments = [SaeAttachment(s.name, load_sae(s.path), s.layer) for s in srv.settings.sae]
    engine = Engine.from_loaded(lm, attachments)
    domain = tuple(
        FeatureEdit(e.sae, e.feature, MODE_OF[e.mode], e.value, e.only_when_active) for e in edits
    )
    handle = engine.add(
        GenerationRequest(
            tuple(prompt_ids), SamplingParams(max_new_tokens=n, ignore_eos=True), domain
        )
    )
    while not engine.idle:
        engine.step()
    tokens = []
    while (out := handle.channel.take(0)) is not None:
        tokens += out.token_ids
    engine.hooks.remove()
    return tokens


def _ids(chunks: list[pb.GenerateResponse]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


@pytest.mark.parametrize("case", list(CASES))
def test_streamed_tokens_equal_the_engine(server: ServerThread, case: str) -> None:
    prompt = "Tell me about the sea"
    chunks = server.generate(request(prompt, edits=CASES[case], max_new_tokens=10, ignore_eos=True))
    tokenizer = server.app.frontend.tokenizer
    prompt_ids = tokenizer(prompt).input_ids
    assert _ids(chunks) == _reference(server, prompt_ids, CASES[case], 10)
    assert "".join(c.text for c in chunks) == tokenizer.decode(
        _ids(chunks), skip_special_tokens=True
    )
    last = chunks[-1]
    assert last.finish_reason == pb.FINISH_REASON_LENGTH
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (len(prompt_ids), 10)
    assert last.HasField("seed")
    assert all(c.finish_reason == pb.FINISH_REASON_UNSPECIFIED for c in chunks[:-1])


def test_steering_changes_the_stream(server: ServerThread) -> None:
    plain = server.generate(request("Tell me about the sea", max_new_tokens=10, ignore_eos=True))
    steered = server.generate(
        request("Tell me about the sea", edits=CASES["set"], max_new_tokens=10, ignore_eos=True)
    )
    assert _ids(plain) != _ids(steered)


def test_chat_input_uses_the_template_with_one_bos(server: ServerThread) -> None:
    chat = [("user", "Tell me about the sea")]
    chunks = server.generate(
        request(chat=chat, edits=CASES["several SAEs"], max_new_tokens=8, ignore_eos=True)
    )
    tokenizer = server.app.frontend.tokenizer
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": chat[0][1]}], add_generation_prompt=True
    )
    ids = list(ids["input_ids"])
    assert ids.count(tokenizer.bos_token_id) == 1
    assert chunks[-1].usage.prompt_tokens == len(ids)
    assert _ids(chunks) == _reference(server, ids, CASES["several SAEs"], 8)


def test_greedy_stream_is_the_same_whatever_shares_the_batch(server: ServerThread) -> None:
    import concurrent.futures

    alone = _ids(server.generate(request("A small bird sang", max_new_tokens=12, ignore_eos=True)))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        busy = [
            pool.submit(
                server.generate,
                request("The forest", edits=CASES["set"], max_new_tokens=20, ignore_eos=True),
            )
            for _ in range(3)
        ]
        together = pool.submit(
            server.generate, request("A small bird sang", max_new_tokens=12, ignore_eos=True)
        )
        assert _ids(together.result()) == alone
        for f in busy:
            f.result()


def test_stop_string_ends_the_text_before_it(gemma2_server: ServerThread) -> None:
    free = gemma2_server.generate(
        request("Tell me about the sea", max_new_tokens=30, ignore_eos=True)
    )
    text = "".join(c.text for c in free)
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip()
    chunks = gemma2_server.generate(
        request("Tell me about the sea", max_new_tokens=30, ignore_eos=True, stop=[stop])
    )
    assert chunks[-1].finish_reason == pb.FINISH_REASON_STOP
    assert "".join(c.text for c in chunks) == text[: text.index(stop)]
    gemma2_server.wait_idle()


def test_eos_finishes_unless_ignored(gemma2_server: ServerThread) -> None:
    chunks = gemma2_server.generate(request("Hi", max_new_tokens=0))  # server default length
    last = chunks[-1]
    assert last.finish_reason in (pb.FINISH_REASON_EOS, pb.FINISH_REASON_LENGTH)
    assert last.usage.completion_tokens == len(_ids(chunks))
    if last.finish_reason == pb.FINISH_REASON_LENGTH:
        assert last.usage.completion_tokens == gemma2_server.settings.default_max_new_tokens


def test_seeded_sampling_reproduces_over_grpc(gemma2_server: ServerThread) -> None:
    def sample(**kw: object) -> tuple[list[int], int]:
        chunks = gemma2_server.generate(
            request("Hi", max_new_tokens=16, temperature=1.2, ignore_eos=True, **kw)
        )
        return _ids(chunks), chunks[-1].seed

    first, seed = sample(seed=11)
    assert seed == 11 and sample(seed=11)[0] == first and sample(seed=12)[0] != first
    fresh, fresh_seed = sample()
    assert sample(seed=fresh_seed)[0] == fresh


def test_describe_model(server: ServerThread) -> None:
    d = server.stub.DescribeModel(pb.DescribeModelRequest())
    assert (d.model.num_layers, d.model.d_model) in ((4, 64), (6, 64))
    assert d.model.vocab_size == len(server.app.frontend.tokenizer)
    assert [(s.name, s.layer, s.d_sae, s.site) for s in d.saes] == [
        ("gs1", 1, 128, "resid_post"),
        ("gs2", 2, 96, "resid_post"),
        ("lens", 1, 64, "resid_post"),
    ]
    assert d.limits.max_new_tokens == server.settings.max_new_tokens
    assert d.limits.max_batch_size == server.settings.max_active_rows
    # CPU: eager decoding, said as such, and the gauge agrees
    assert d.model.cuda_graphs == "off" and server.metrics()["steering_cuda_graphs"] == 0
    assert d.model.dtype == str(server.app.frontend.engine.dtype).removeprefix("torch.")
    assert d.model.batch_invariance == (
        "prefill: one row per forward, chunks by the prompt alone; decode: rows and keys by batch"
    )


def test_describe_model_says_which_decode_shapes_are_in_force(
    model_folders: dict[str, Path], sae_specs: list[str]
) -> None:
    srv = ServerThread(model=model_folders["gemma3"], sae=sae_specs[:1], decode_shapes="fixed")
    try:
        d = srv.stub.DescribeModel(pb.DescribeModelRequest())
        assert d.model.batch_invariance.endswith("decode: fixed rows and context")
        answer = srv.stub.Generate(
            pb.GenerateRequest(prompt="hello", sampling=pb.SamplingParams(max_new_tokens=4))
        )
        assert sum(len(r.token_ids) for r in answer) == 4
    finally:
        srv.close()


def test_health_is_serving_after_warm_up(gemma2_server: ServerThread) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(gemma2_server.channel)
    for service in ("", "steering.v1.SteeringService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(gemma2_server: ServerThread) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(gemma2_server.channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert "steering.v1.SteeringService" in names


def _reflection_v1(channel: grpc.Channel, *requests: Any) -> list[Any]:
    """Ask `grpc.reflection.v1` (what grpcurl and `buf curl` try first). Its messages are
    v1alpha's under another package name: the same bytes on the wire."""
    from grpc_reflection.v1alpha import reflection_pb2

    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return list(call(iter(requests), timeout=30))


def test_reflection_v1_lists_the_service(gemma2_server: ServerThread) -> None:
    from grpc_reflection.v1alpha import reflection_pb2

    (reply,) = _reflection_v1(
        gemma2_server.channel, reflection_pb2.ServerReflectionRequest(list_services="")
    )
    names = {s.name for s in reply.list_services_response.service}
    assert {
        "steering.v1.SteeringService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


def test_reflection_v1_describes_the_service_and_itself(gemma2_server: ServerThread) -> None:
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    symbols = ("steering.v1.SteeringService", "grpc.reflection.v1.ServerReflection")
    replies = _reflection_v1(
        gemma2_server.channel,
        *(reflection_pb2.ServerReflectionRequest(file_containing_symbol=s) for s in symbols),
    )
    packages = []
    for reply in replies:
        assert reply.WhichOneof("message_response") == "file_descriptor_response"
        file = descriptor_pb2.FileDescriptorProto.FromString(
            reply.file_descriptor_response.file_descriptor_proto[0]
        )
        packages.append((file.package, [s.name for s in file.service]))
    assert packages == [
        ("steering.v1", ["SteeringService"]),
        ("grpc.reflection.v1", ["ServerReflection"]),
    ]
