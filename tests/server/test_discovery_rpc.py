"""Discovery over gRPC: labels from --labels and beside the SAE, SearchFeatures, Inspect,
Contrast, and watch and receipts on Generate; bad input is INVALID_ARGUMENT naming the field."""

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
from steering_proto.v1 import steering_pb2 as pb
from tests.server.harness import ServerThread, edit, request

LABELS_A = {3: "ocean waves and ships", 7: "the sea", 9: "forest trees", 11: "sea shells"}


@pytest.fixture(scope="module")
def labelled(
    tmp_path_factory: pytest.TempPathFactory, model_folders: dict[str, Path]
) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("labelled")
    a = save_sae(random_sae(64, 32, seed=5, threshold=0.02), root / "a", "gemma_scope_2")
    b = save_sae(random_sae(64, 48, seed=6, threshold=0.02), root / "b", "gemma_scope_1")
    # a: a Neuronpedia export beside its file; b: JSON Lines named by --labels.
    export = [
        {"index": str(i), "description": f"  {text} ", "extra": 1} for i, text in LABELS_A.items()
    ]
    export[1] |= {"maxActApprox": 6.5, "frac_nonzero": 0.125}  # feature 7, "the sea"
    (root / "a" / "explanations.json").write_text(json.dumps(export))
    lines = [{"feature": 1, "label": "city streets at night"}, {"feature": 2, "label": "sea"}]
    (root / "b.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    srv = ServerThread(
        model=model_folders["gemma2"],
        sae=[f"a={a}@1", f"b={b}@2"],
        labels=[f"b={root / 'b.jsonl'}"],
    )
    yield srv
    srv.close()


def test_labels_are_counted_and_searched(labelled: ServerThread) -> None:
    d = labelled.stub.DescribeModel(pb.DescribeModelRequest())
    assert {s.name: s.labels for s in d.saes} == {"a": 4, "b": 2}
    assert d.limits.max_top_k == 64 and d.limits.max_watched_features == 16
    found = labelled.stub.SearchFeatures(pb.SearchFeaturesRequest(query="sea"))
    # exact first; then "sea shells" before "the sea" (equal coverage, "sea" comes earlier)
    assert [(m.sae, m.feature) for m in found.matches][:3] == [("b", 2), ("a", 11), ("a", 7)]
    assert {(m.sae, m.feature, m.label) for m in found.matches} >= {("a", 11, "sea shells")}
    only_a = labelled.stub.SearchFeatures(pb.SearchFeaturesRequest(query="ships", sae="a", limit=1))
    assert [(m.sae, m.feature, m.label) for m in only_a.matches] == [
        ("a", 3, "ocean waves and ships")
    ]


def test_search_carries_typical_max_and_frequency(labelled: ServerThread) -> None:
    found = labelled.stub.SearchFeatures(pb.SearchFeaturesRequest(query="sea", sae="a"))
    stats = {m.feature: (m.typical_max, m.frequency) for m in found.matches}
    assert stats[7] == (6.5, 0.125) and stats[11] == (0.0, 0.0)  # 0: unknown
    matches = _post(labelled, "/v1/steering/search", {"query": "sea", "sae": "a"})["matches"]
    http_stats = {m["feature"]: (m["typical_max"], m["frequency"]) for m in matches}
    assert http_stats == stats


def test_search_by_activation_and_both_over_grpc_and_http(labelled: ServerThread) -> None:
    query = "The old sailors rowed across the sea"
    read = labelled.stub.SearchFeatures(
        pb.SearchFeaturesRequest(query=query, by=pb.SEARCH_BY_ACTIVATION, limit=5)
    )
    assert read.matches and all(m.found_by == "activation" and m.score > 0 for m in read.matches)
    assert [m.score for m in read.matches] == sorted((m.score for m in read.matches), reverse=True)
    both = labelled.stub.SearchFeatures(
        pb.SearchFeaturesRequest(query=query, by=pb.SEARCH_BY_BOTH, limit=20)
    )
    labels = labelled.stub.SearchFeatures(pb.SearchFeaturesRequest(query=query, limit=20))
    assert labels.matches and all(m.found_by == "labels" for m in labels.matches)
    n = len(labels.matches)
    assert list(both.matches[:n]) == list(labels.matches)
    keys = [(m.sae, m.feature) for m in both.matches]
    assert len(set(keys)) == len(keys)
    http = _post(labelled, "/v1/steering/search", {"query": query, "by": "activation", "limit": 5})
    assert [(m["sae"], m["feature"], m["found_by"]) for m in http["matches"]] == [
        (m.sae, m.feature, "activation") for m in read.matches
    ]
    bad = _post(labelled, "/v1/steering/search", {"query": query, "by": "meaning"})
    assert bad["status"] in (400, 422)
    with pytest.raises(grpc.RpcError) as err:
        labelled.stub.SearchFeatures(pb.SearchFeaturesRequest(query=query, by=99))  # type: ignore[arg-type]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "by" in err.value.details()


def _post(srv: ServerThread, path: str, body: object) -> Any:
    url = f"http://127.0.0.1:{srv.app.http_port}{path}"
    post = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(post, timeout=30) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as exc:
        return {"status": exc.code} | json.load(exc)


def test_a_relative_edit_runs_as_value_times_typical_max(labelled: ServerThread) -> None:
    """a:7 has typical maximum 6.5: `set:1.5x` is `set:9.75`, token for token, over gRPC and
    HTTP; receipts show 9.75; a:3 has none, so a relative edit of it is refused naming it."""

    def greedy(*edits: pb.FeatureEdit) -> list[pb.GenerateResponse]:
        return labelled.generate(
            request("The sea was calm", edits=list(edits), max_new_tokens=8, ignore_eos=True)
        )

    relative = edit("a", 7, pb.EDIT_MODE_SET, 1.5)
    relative.relative = True
    got, want = greedy(relative), greedy(edit("a", 7, pb.EDIT_MODE_SET, 9.75))
    ids = [[i for c in chunks for i in c.token_ids] for chunks in (got, want, greedy())]
    assert ids[0] == ids[1] != ids[2]
    (receipt,) = got[-1].receipts
    assert (receipt.edit.value, receipt.edit.relative) == (9.75, False)

    assert labelled.app.frontend is not None
    body = {"model": labelled.app.frontend.name, "prompt": "The sea was calm", "max_tokens": 8}
    body |= {"temperature": 0, "ignore_eos": True}
    texts = []
    for edits in (["a:7=set:1.5x"], [{"sae": "a", "feature": 7, "mode": "set", "value": 1.5,
                                     "relative": True}], ["a:7=set:9.75"]):  # fmt: skip
        answer = _post(labelled, "/v1/completions", body | {"steering": {"edits": edits}})
        assert [r["edit"] for r in answer["steering"]["receipts"]] == ["a:7=set:9.75"], answer
        texts.append(answer["choices"][0]["text"])
    assert texts[0] == texts[1] == texts[2]

    no_max = edit("a", 3, pb.EDIT_MODE_SET, 1.5)
    no_max.relative = True
    with pytest.raises(grpc.RpcError) as err:
        greedy(no_max)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("edits[0].relative: "), err.value.details()
    answer = _post(labelled, "/v1/completions", body | {"steering": {"edits": ["a:3=set:1.5x"]}})
    assert answer["status"] == 400 and answer["error"]["param"] == "steering.edits[0].relative"
    labelled.wait_idle()


def test_inspect_reports_every_token_with_labels(labelled: ServerThread) -> None:
    response = labelled.stub.Inspect(
        pb.InspectRequest(
            prompt="The sea was calm",
            top_k=32,
            features=[pb.FeatureRef(sae="a", feature=7), pb.FeatureRef(sae="b", feature=2)],
        )
    )
    tokenizer = labelled.app.frontend.tokenizer
    assert [t.token_id for t in response.tokens] == tokenizer("The sea was calm").input_ids
    first = response.tokens[0]
    assert first.special and not first.top and [f.activation for f in first.features] == [0, 0]
    assert [(f.sae, f.feature, f.label) for f in first.features] == [
        ("a", 7, "the sea"),
        ("b", 2, "sea"),
    ]
    tops = [f for t in response.tokens[1:] for f in t.top]
    assert tops and all(f.activation > 0 for f in tops)
    assert all(f.label == LABELS_A.get(f.feature, "") for f in tops if f.sae == "a")
    labelled.wait_idle()


def test_generate_streams_watched_values_and_receipts(labelled: ServerThread) -> None:
    msg = request(
        "The sea was calm",
        edits=[edit("a", 7, pb.EDIT_MODE_SET, 5.0), edit("b", 2, pb.EDIT_MODE_ABLATE, active=True)],
        max_new_tokens=5,
        ignore_eos=True,
    )
    msg.watch.extend([pb.FeatureRef(sae="a", feature=7), pb.FeatureRef(sae="b", feature=1)])
    chunks = labelled.generate(msg)
    assert sum(len(c.watched) for c in chunks) == sum(len(c.token_ids) for c in chunks) == 5
    assert all(len(w.activations) == 2 for c in chunks for w in c.watched)
    receipts = chunks[-1].receipts
    assert [(r.edit.sae, r.edit.feature) for r in receipts] == [("a", 7), ("b", 2)]
    prompt_tokens = chunks[-1].usage.prompt_tokens
    # SET applies at every steerable position processed: the prompt (BOS aside) and 4 tokens.
    assert receipts[0].applied_positions == prompt_tokens - 1 + 4
    assert receipts[1].applied_positions == receipts[1].active_positions


def test_contrast_ranks_features_with_labels(labelled: ServerThread) -> None:
    response = labelled.stub.Contrast(
        pb.ContrastRequest(a=["The sea", "Waves and boats"], b=["The city", "Cars"], top_k=3)
    )
    assert len(response.toward_a) == 3 and len(response.toward_b) == 3
    assert all(c.mean_a > c.mean_b for c in response.toward_a)
    assert all(c.mean_a < c.mean_b for c in response.toward_b)
    labels_b = {1: "city streets at night", 2: "sea"}
    for c in list(response.toward_a) + list(response.toward_b):
        assert c.label == (LABELS_A if c.sae == "a" else labels_b).get(c.feature, "")


@pytest.mark.parametrize(
    ("rpc", "message", "field"),
    [
        ("Inspect", pb.InspectRequest(prompt="x", top_k=65), "top_k"),
        ("Inspect", pb.InspectRequest(prompt="x", saes=["zz"]), "saes[0]"),
        ("Inspect", pb.InspectRequest(), "input"),
        (
            "Inspect",
            pb.InspectRequest(prompt="x", features=[pb.FeatureRef(sae="a", feature=32)]),
            "features[0].feature",
        ),
        ("SearchFeatures", pb.SearchFeaturesRequest(query="sea", sae="zz"), "sae"),
        ("SearchFeatures", pb.SearchFeaturesRequest(query="sea", limit=101), "limit"),
        ("SearchFeatures", pb.SearchFeaturesRequest(query=" "), "query"),
        ("Contrast", pb.ContrastRequest(a=[], b=["x"]), "a"),
        ("Contrast", pb.ContrastRequest(a=["x"], b=["y"] * 257), "b"),
        ("Contrast", pb.ContrastRequest(a=["x"], b=["y"], sae="zz"), "sae"),
    ],
)
def test_bad_discovery_calls_name_the_field(
    labelled: ServerThread, rpc: str, message: object, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        getattr(labelled.stub, rpc)(message)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}: "), err.value.details()


def test_discovery_calls_are_counted_by_rpc(labelled: ServerThread) -> None:
    before = labelled.metrics()
    labelled.stub.SearchFeatures(pb.SearchFeaturesRequest(query="sea"))
    with pytest.raises(grpc.RpcError):
        labelled.stub.Contrast(pb.ContrastRequest(a=[], b=["x"]))
    labelled.stub.Inspect(pb.InspectRequest(prompt="The sea"))
    after = labelled.metrics()

    def grew(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert grew('steering_discovery_requests_total{outcome="ok",rpc="SearchFeatures"}') == 1
    assert grew('steering_discovery_requests_total{outcome="invalid_argument",rpc="Contrast"}') == 1
    assert grew('steering_discovery_requests_total{outcome="ok",rpc="Inspect"}') == 1
    tokens = len(labelled.app.frontend.tokenizer("The sea").input_ids)
    assert grew("steering_inspected_tokens_total") == tokens


def test_an_inspect_reply_over_the_message_limit_is_refused_before_the_work(
    tmp_path: Path, model_folders: dict[str, Path]
) -> None:
    """Within every documented limit, yet its reply could not be sent: refused at once, naming
    the limit, and counted as refused, not ok."""
    sae = save_sae(random_sae(64, 32, seed=5, threshold=0.02), tmp_path / "a", "gemma_scope_2")
    labels = [{"index": i, "description": f"feature {i} " + "x" * 300} for i in range(32)]
    (tmp_path / "a" / "explanations.json").write_text(json.dumps(labels))
    srv = ServerThread(model=model_folders["gemma2"], sae=[f"a={sae}@1"], max_message_bytes=65536)
    try:
        before = srv.metrics()
        with pytest.raises(grpc.RpcError) as err:
            srv.stub.Inspect(pb.InspectRequest(prompt="The sea was calm today " * 20, top_k=32))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert "max_message_bytes" in err.value.details() and "65536" in err.value.details()
        after = srv.metrics()
        ok = 'steering_discovery_requests_total{outcome="ok",rpc="Inspect"}'
        refused = 'steering_discovery_requests_total{outcome="invalid_argument",rpc="Inspect"}'
        assert after[ok] == before[ok] and after[refused] == before[refused] + 1
        assert after["steering_prompt_tokens_total"] == before["steering_prompt_tokens_total"]
        small = srv.stub.Inspect(pb.InspectRequest(prompt="The sea", top_k=4))
        assert small.tokens and small.ByteSize() <= 65536
    finally:
        srv.close()
