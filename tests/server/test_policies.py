"""Policies over gRPC: presets (listed, equal to their edits, the request's own edits win),
steering vectors served as a linear SAE, stop rules, and their bad input named to the field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import save_file

from steering import save_sae
from steering.demo.toy import random_sae
from steering.sae.formats import file_sha256, sae_file
from steering_proto.v1 import steering_pb2 as pb
from tests.server.harness import ServerThread, edit, request

VECTORS = torch.randn(4, 64, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def policy_server(
    tmp_path_factory: pytest.TempPathFactory, model_folders: dict[str, Path]
) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("policies")
    sae = save_sae(random_sae(64, 32, seed=7, threshold=0.02), root / "s")
    save_file({"directions": VECTORS}, str(root / "v.safetensors"))
    digest = file_sha256(sae_file(sae))
    (root / "presets.toml").write_text(
        "[presets.calm]\n"
        'description = "calm sea"\n'
        'edits = ["s:3=set:20", "s:5=ablate", "v:1=add:4@active"]\n'
        f'sha256 = {{ s = "{digest}" }}\n'
    )
    srv = ServerThread(
        model=model_folders["gemma2"],
        sae=[f"s={sae}@1"],
        vector=[f"v={root / 'v.safetensors'}@2"],
        presets=root / "presets.toml",
    )
    yield srv
    srv.close()


def _ids(chunks: list[pb.GenerateResponse]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def test_describe_lists_presets_kinds_and_digests(policy_server: ServerThread) -> None:
    d = policy_server.stub.DescribeModel(pb.DescribeModelRequest())
    assert [(s.name, s.kind) for s in d.saes] == [("s", "jumprelu"), ("v", "vector")]
    assert all(len(s.sha256) == 64 for s in d.saes)
    (preset,) = d.presets
    assert (preset.name, preset.description) == ("calm", "calm sea")
    assert [(e.sae, e.feature, e.mode) for e in preset.edits] == [
        ("s", 3, pb.EDIT_MODE_SET),
        ("s", 5, pb.EDIT_MODE_ABLATE),
        ("v", 1, pb.EDIT_MODE_ADD),
    ]
    assert d.limits.max_rules_per_request == 16


def test_a_preset_equals_its_edits_and_own_edits_win(policy_server: ServerThread) -> None:
    explicit = [
        edit("s", 3, pb.EDIT_MODE_SET, 20.0),
        edit("s", 5, pb.EDIT_MODE_ABLATE),
        edit("v", 1, pb.EDIT_MODE_ADD, 4.0, active=True),
    ]
    by_preset = request("The sea", max_new_tokens=8, ignore_eos=True)
    by_preset.preset = "calm"
    with_edits = request("The sea", edits=explicit, max_new_tokens=8, ignore_eos=True)
    plain = request("The sea", max_new_tokens=8, ignore_eos=True)
    steered = policy_server.generate(by_preset)
    assert _ids(steered) == _ids(policy_server.generate(with_edits))
    assert _ids(steered) != _ids(policy_server.generate(plain))
    assert len(steered[-1].receipts) == 3
    override = request(
        "The sea", edits=[edit("s", 3, pb.EDIT_MODE_SET, 0.0)], max_new_tokens=8, ignore_eos=True
    )
    override.preset = "calm"
    same = request(
        "The sea", edits=[edit("s", 3, pb.EDIT_MODE_SET, 0.0), *explicit[1:]],
        max_new_tokens=8, ignore_eos=True,
    )  # fmt: skip
    assert _ids(policy_server.generate(override)) == _ids(policy_server.generate(same))


def test_a_vector_steers_and_is_inspected_as_its_projection(policy_server: ServerThread) -> None:
    plain = request("The sea", max_new_tokens=8, ignore_eos=True)
    pushed = request(
        "The sea", edits=[edit("v", 0, pb.EDIT_MODE_ADD, 30.0)], max_new_tokens=8, ignore_eos=True
    )
    assert _ids(policy_server.generate(plain)) != _ids(policy_server.generate(pushed))
    inspected = policy_server.stub.Inspect(
        pb.InspectRequest(prompt="The sea", features=[pb.FeatureRef(sae="v", feature=2)])
    )
    values = [t.features[0].activation for t in inspected.tokens[1:]]
    frontend = policy_server.app.frontend
    assert frontend is not None
    ids = frontend.tokenizer("The sea").input_ids
    policy_server.wait_idle()
    with torch.no_grad():  # the output of layer 2, where the vectors are served
        out = frontend.engine.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    x, v = out.hidden_states[3][0, 1:], VECTORS[2]
    assert values == pytest.approx((x @ v / (v @ v)).tolist(), abs=1e-4)  # the coefficient


def test_a_stop_rule_ends_with_condition(policy_server: ServerThread) -> None:
    msg = request("The sea", max_new_tokens=20, ignore_eos=True)
    msg.rules.append(pb.Rule(when=pb.FeatureRef(sae="v", feature=0), above=-1e6, stop=True))
    before = policy_server.metrics()
    chunks = policy_server.generate(msg)
    assert chunks[-1].finish_reason == pb.FINISH_REASON_CONDITION
    assert chunks[-1].usage.completion_tokens == 0
    fired = 'steering_rules_fired_total{action="stop"}'
    after = policy_server.metrics_reaching(fired, before[fired] + 1)
    assert after[fired] == before[fired] + 1
    assert after['steering_finish_reasons_total{reason="condition"}'] >= 1


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        (pb.Rule(when=pb.FeatureRef(sae="s", feature=1), above=1.0), "rules[0]"),
        (pb.Rule(when=pb.FeatureRef(sae="s", feature=1), above=1.0, stop=False), "rules[0]"),
        (pb.Rule(when=pb.FeatureRef(sae="x", feature=1), stop=True), "rules[0].when.sae"),
        (
            pb.Rule(when=pb.FeatureRef(sae="s", feature=1), above=float("inf"), stop=True),
            "rules[0].above",
        ),
        (
            pb.Rule(
                when=pb.FeatureRef(sae="s", feature=1),
                apply=pb.Edits(edits=[pb.FeatureEdit(sae="s", feature=3, mode=1, value=1)]),
            ),
            "rules[0].apply.edits[0].feature",  # the preset edits feature 3 already
        ),
        (
            pb.Rule(
                when=pb.FeatureRef(sae="s", feature=1),
                apply=pb.Edits(edits=[pb.FeatureEdit(sae="s", feature=9)]),
            ),
            "rules[0].apply.edits[0].mode",
        ),
    ],
)
def test_bad_rules_and_presets_name_the_field(
    policy_server: ServerThread, rule: pb.Rule, field: str
) -> None:
    msg = request("The sea")
    msg.preset = "calm"
    msg.rules.append(rule)
    with pytest.raises(grpc.RpcError) as err:
        policy_server.generate(msg)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"{field}: "), err.value.details()


def test_an_unknown_preset_is_named(policy_server: ServerThread) -> None:
    msg = request("The sea")
    msg.preset = "stormy"
    with pytest.raises(grpc.RpcError) as err:
        policy_server.generate(msg)
    assert err.value.details().startswith("preset: unknown preset 'stormy'")
