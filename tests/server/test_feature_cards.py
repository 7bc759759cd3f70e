"""Feature cards (DescribeFeature, GET /v1/steering/features/{sae}/{index}) and Inspect's typical
maxima, over gRPC and HTTP, against references computed here: the promoted and suppressed tokens
are the top and bottom of W_dec[i] · W_U from the files' tensors and the model's unembedding; the
label, typical maximum, frequency and top contexts are those of a label file written here."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from steering import save_sae
from steering.demo.toy import random_sae
from steering_proto.v1 import steering_pb2 as pb
from tests.server.harness import ServerThread

CONTEXTS = ["the [[sea]] was calm", "ships at [[sea]]"]
EXPORT = [
    {"index": "7", "description": "the sea", "maxActApprox": 6.5, "frac_nonzero": 0.125,
     "topContexts": [*CONTEXTS, {"tokens": ["an", "object"]}, 3, "  "]},
    {"index": "9", "description": "forest trees"},
]  # fmt: skip
VECTORS = torch.randn(3, 64, generator=torch.Generator().manual_seed(4))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cards")
    save_sae(random_sae(64, 32, seed=5, threshold=0.02), root / "a", "gemma_scope_2")
    (root / "a" / "explanations.json").write_text(json.dumps(EXPORT))
    save_file({"directions": VECTORS}, str(root / "v.safetensors"))
    return root


@pytest.fixture(scope="module")
def srv(root: Path, model_folders: dict[str, Path]) -> Iterator[ServerThread]:
    srv = ServerThread(
        model=model_folders["gemma2"],
        sae=[f"a={root / 'a'}@1"],
        vector=[f"v={root / 'v.safetensors'}@2"],
    )
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def reference(model_folders: dict[str, Path]) -> tuple[torch.Tensor, Any]:
    """The model's unembedding (vocab, d_model), read by transformers alone, and its tokenizer."""
    folder = model_folders["gemma2"]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    w_u = model.get_output_embeddings().weight.detach().float()
    assert w_u.shape[0] == len(tokenizer)  # every row is a token the tokenizer can decode
    return w_u, tokenizer


def expected_tokens(
    row: torch.Tensor, reference: tuple[torch.Tensor, Any], k: int
) -> tuple[list[tuple[int, str]], list[tuple[int, str]], torch.Tensor]:
    w_u, tokenizer = reference
    logits = w_u @ row.float()  # (vocab,)
    top = torch.topk(logits, k).indices.tolist()
    bottom = torch.topk(-logits, k).indices.tolist()

    def named(ids: list[int]) -> list[tuple[int, str]]:
        return [(i, tokenizer.decode([i])) for i in ids]

    return named(top), named(bottom), logits


def tokens_of(weights: Any) -> list[tuple[int, str]]:
    return [(t.token_id, t.text) for t in weights]


@pytest.mark.parametrize("top_tokens", [0, 5])
def test_a_card_equals_the_reference(
    srv: ServerThread, root: Path, reference: tuple[torch.Tensor, Any], top_tokens: int
) -> None:
    w_dec = load_file(str(root / "a" / "params.safetensors"))["w_dec"]  # (d_sae, d_model)
    request = pb.DescribeFeatureRequest(sae="a", feature=7, top_tokens=top_tokens)
    card = srv.stub.DescribeFeature(request)
    promoted, suppressed, logits = expected_tokens(w_dec[7], reference, top_tokens or 10)
    assert tokens_of(card.promoted) == promoted
    assert tokens_of(card.suppressed) == suppressed
    for t in [*card.promoted, *card.suppressed]:
        assert t.weight == pytest.approx(float(logits[t.token_id]), rel=1e-5, abs=1e-6)
    assert (card.sae, card.feature, card.label) == ("a", 7, "the sea")
    assert (card.typical_max, card.frequency) == (6.5, 0.125)
    assert list(card.top_contexts) == CONTEXTS  # what is not a string is skipped
    http = _get(srv, f"/v1/steering/features/a/7?top_tokens={top_tokens}")
    assert http["label"] == "the sea" and http["top_contexts"] == CONTEXTS
    assert (http["typical_max"], http["frequency"]) == (6.5, 0.125)
    assert [(t["token_id"], t["text"]) for t in http["promoted"]] == promoted
    assert [(t["token_id"], t["text"]) for t in http["suppressed"]] == suppressed


def test_a_vector_and_an_unlabelled_feature_get_cards(
    srv: ServerThread, reference: tuple[torch.Tensor, Any]
) -> None:
    card = srv.stub.DescribeFeature(pb.DescribeFeatureRequest(sae="v", feature=2, top_tokens=3))
    promoted, suppressed, _ = expected_tokens(VECTORS[2], reference, 3)  # W_dec[i] = v_i
    assert (tokens_of(card.promoted), tokens_of(card.suppressed)) == (promoted, suppressed)
    assert (card.label, card.typical_max, card.frequency, list(card.top_contexts)) == (
        "",
        0.0,
        0.0,
        [],
    )
    assert _get(srv, "/v1/steering/features/a/3")["label"] == ""


@pytest.mark.parametrize(
    ("sae", "feature", "top_tokens", "field"),
    [
        ("nope", 1, 0, "sae"),
        ("a", 32, 0, "feature"),
        ("v", 3, 0, "feature"),
        ("a", 1, 65, "top_tokens"),
    ],
)
def test_bad_card_requests_name_the_field(
    srv: ServerThread, sae: str, feature: int, top_tokens: int, field: str
) -> None:
    request = pb.DescribeFeatureRequest(sae=sae, feature=feature, top_tokens=top_tokens)
    with pytest.raises(grpc.RpcError) as caught:
        srv.stub.DescribeFeature(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(caught.value.details()).startswith(f"{field}:")
    answer = _get(srv, f"/v1/steering/features/{sae}/{feature}?top_tokens={top_tokens}")
    assert answer["status"] == 400 and answer["error"]["param"] == field


def test_http_card_path_and_query_must_be_integers(srv: ServerThread) -> None:
    answer = _get(srv, "/v1/steering/features/a/x")
    assert answer["status"] == 400 and answer["error"]["param"] == "index"
    answer = _get(srv, "/v1/steering/features/a/-1")
    assert answer["status"] == 400 and answer["error"]["param"] == "feature"
    answer = _get(srv, "/v1/steering/features/a/1?top_tokens=many")
    assert answer["status"] == 400 and answer["error"]["param"] == "top_tokens"


def test_inspect_activations_carry_the_typical_maximum(srv: ServerThread) -> None:
    request = pb.InspectRequest(
        prompt="the sea and the forest",
        saes=["a"],
        top_k=32,
        features=[pb.FeatureRef(sae="a", feature=7), pb.FeatureRef(sae="a", feature=9)],
    )
    tokens = srv.stub.Inspect(request).tokens
    top = [a for t in tokens for a in t.top]
    assert top, "some feature of a fires"
    for a in [*top, *(a for t in tokens for a in t.features)]:
        assert a.typical_max == (6.5 if a.feature == 7 else 0.0)
    assert [a.typical_max for a in tokens[0].features] == [6.5, 0.0]
    body = {"prompt": "the sea and the forest", "saes": ["a"], "top_k": 32}
    body["features"] = ["a:7", "a:9"]
    http = _post(srv, "/v1/steering/inspect", body)["tokens"]
    assert [a["typical_max"] for a in http[0]["features"]] == [6.5, 0.0]
    http_top = [(a["feature"], a["typical_max"]) for t in http for a in t["top"]]
    assert http_top == [(a.feature, a.typical_max) for a in top]


def _get(srv: ServerThread, path: str) -> Any:
    return _call(urllib.request.Request(f"http://127.0.0.1:{srv.app.http_port}{path}"))


def _post(srv: ServerThread, path: str, body: object) -> Any:
    url = f"http://127.0.0.1:{srv.app.http_port}{path}"
    headers = {"Content-Type": "application/json"}
    return _call(urllib.request.Request(url, json.dumps(body).encode(), headers))


def _call(request: urllib.request.Request) -> Any:
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as exc:
        return {"status": exc.code} | json.load(exc)
