"""Score and Sweep over gRPC, HTTP and the client (its CLI included): the same numbers on
every edge, a point per strength in order with the recommendation on the last, and bad input
named to the field (INVALID_ARGUMENT, HTTP 400)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from steering import save_sae
from steering.demo.toy import random_sae
from steering_client import SteeringClient
from steering_client.cli import main
from steering_proto.v1 import steering_pb2 as pb
from tests.server.harness import ServerThread, edit

PROMPTS = ["The sea was", "Once upon a time"]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_folders: dict[str, Path]
) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("dose")
    a = save_sae(random_sae(64, 32, seed=5, threshold=0.02), root / "a", "gemma_scope_2")
    export = [{"index": "7", "description": "the sea", "maxActApprox": 4.0}]
    (root / "a" / "explanations.json").write_text(json.dumps(export))
    srv = ServerThread(model=model_folders["gemma2"], sae=[f"a={a}@1"])
    yield srv
    srv.close()


def _post(srv: ServerThread, path: str, body: object) -> Any:
    url = f"http://127.0.0.1:{srv.app.http_port}{path}"
    post = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(post, timeout=60) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as exc:
        return {"status": exc.code} | json.load(exc)


def test_score_is_the_same_on_every_edge(server: ServerThread) -> None:
    steer = edit("a", 7, pb.EDIT_MODE_SET, 5.0)
    got = server.stub.Score(
        pb.ScoreRequest(
            prompt="The sea",
            continuation=" was calm and blue",
            edits=[steer],
            features=[pb.FeatureRef(sae="a", feature=7), pb.FeatureRef(sae="a", feature=3)],
        )
    )
    assert got.tokens and got.prompt_tokens >= 2
    assert all(t.logprob <= 0 and len(t.activations) == 2 for t in got.tokens)
    answer = _post(
        server,
        "/v1/steering/score",
        {"prompt": "The sea", "continuation": " was calm and blue", "edits": ["a:7=set:5"],
         "features": ["a:7", {"sae": "a", "feature": 3}]},
    )  # fmt: skip
    assert [t["token_id"] for t in answer["tokens"]] == [t.token_id for t in got.tokens]
    assert [t["logprob"] for t in answer["tokens"]] == pytest.approx(
        [t.logprob for t in got.tokens]
    )
    assert answer["mean_activations"] == pytest.approx(list(got.mean_activations))
    with SteeringClient(server.target) as client:
        scored = client.score(
            "The sea", " was calm and blue", edits=[steer], features=[("a", 7), ("a", 3)]
        )
    assert scored.mean_logprob == pytest.approx(got.mean_logprob)
    assert [t.text for t in scored.tokens] == [t.text for t in got.tokens]


def test_sweep_streams_a_point_per_strength_and_the_edges_agree(
    server: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    request = pb.SweepRequest(
        feature=pb.FeatureRef(sae="a", feature=7),
        strengths=[0.5, 2.0],
        prompts=PROMPTS,
        max_new_tokens=6,
    )
    points = list(server.stub.Sweep(request))
    assert [(p.strength, p.value) for p in points] == [(0, 0), (0.5, 2.0), (2.0, 8.0)]
    assert all(len(p.texts) == 2 for p in points)
    assert not any(p.HasField("recommendation") for p in points[:-1])
    assert points[-1].recommendation.reason
    body = {"feature": "a:7", "strengths": [0.5, 2.0], "prompts": PROMPTS, "max_new_tokens": 6}
    answer = _post(server, "/v1/steering/sweep", body)
    assert [p["texts"] for p in answer["points"]] == [list(p.texts) for p in points]
    assert [p["concept"] for p in answer["points"]] == pytest.approx([p.concept for p in points])
    assert answer["recommendation"]["reason"] == points[-1].recommendation.reason
    code = main(
        ["--target", server.target, "sweep", "a:7", "--prompts", *PROMPTS,
         "--strengths", "0.5,2", "--max-new-tokens", "6"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0].split()[:5] == [
        "strength",
        "value",
        "concept",
        "logprob",
        "repetition",
    ]
    assert len(out.splitlines()) == 5  # header, 3 strengths, the recommendation
    assert "recommended" in out.splitlines()[-1]


@pytest.mark.parametrize(
    ("rpc", "message", "field"),
    [
        ("Score", pb.ScoreRequest(prompt="The sea", continuation=""), "continuation"),
        ("Score", pb.ScoreRequest(prompt="x", continuation="y" * 20000), "continuation"),
        ("Sweep", pb.SweepRequest(feature=pb.FeatureRef(sae="a", feature=7)), "prompts"),
        (
            "Sweep",
            pb.SweepRequest(
                feature=pb.FeatureRef(sae="a", feature=7), prompts=["x"], mode=pb.EDIT_MODE_ABLATE
            ),
            "mode",
        ),
    ],
)
def test_bad_dose_calls_name_the_field(
    server: ServerThread, rpc: str, message: Any, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        answer = getattr(server.stub, rpc)(message)
        if rpc == "Sweep":
            list(answer)  # a stream fails as it is read
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}: "), err.value.details()


def test_http_names_the_field_and_describe_tells_the_sweep_limits(server: ServerThread) -> None:
    answer = _post(server, "/v1/steering/score", {"prompt": "x", "continuation": ""})
    assert answer["status"] == 400 and answer["error"]["param"] == "continuation", answer
    limits = server.stub.DescribeModel(pb.DescribeModelRequest()).limits
    assert (limits.max_sweep_prompts, limits.max_sweep_strengths) == (8, 12)
