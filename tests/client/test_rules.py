"""The rule grammar of the CLI, the Rule dataclass's checks, and its proto form."""

from __future__ import annotations

import re

import pytest

from steering_client import Edit, FeatureRef, Rule, parse_rule
from steering_proto.v1 import steering_pb2 as pb


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("res2:5>2.5 -> stop", Rule.stop_when("res2", 5, 2.5)),
        ("res2:5>2.5->stop", Rule.stop_when("res2", 5, 2.5)),
        ("  res2:5 >  2.5   ->   STOP ", Rule.stop_when("res2", 5, 2.5)),
        ("res2:5>-1.5 -> stop", Rule.stop_when("res2", 5, -1.5)),  # vector features go negative
        ("res2:5>-1.5->stop", Rule.stop_when("res2", 5, -1.5)),
        ("res2:5>0 -> stop", Rule.stop_when("res2", 5, 0.0)),
        ("res2:5>1e-3 -> stop", Rule.stop_when("res2", 5, 1e-3)),
        ("res2:5>2 -> res2:9=set:4", Rule.apply_when("res2", 5, 2.0, Edit.set("res2", 9, 4.0))),
        (
            "res2:5>-2->res2:9=set:4,res2:3=ablate@active",
            Rule.apply_when(
                "res2",
                5,
                -2.0,
                Edit.set("res2", 9, 4.0),
                Edit.ablate("res2", 3, only_when_active=True),
            ),
        ),
        (
            "res2:5>3 -> res2:9=add:-0.5 ,  res2:4=scale:2",
            Rule.apply_when("res2", 5, 3.0, Edit.add("res2", 9, -0.5), Edit.scale("res2", 4, 2.0)),
        ),
        (  # ':' inside SAE names, in the condition and in the edits
            "gemma:res:12:5>0.25 -> gemma:res:12:7=set:1",
            Rule.apply_when("gemma:res:12", 5, 0.25, Edit.set("gemma:res:12", 7, 1.0)),
        ),
        ("a:b:4294967295>1 -> stop", Rule.stop_when("a:b", 2**32 - 1, 1.0)),
    ],
)
def test_parse_rule_accepts(text: str, expected: Rule) -> None:
    assert parse_rule(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "no '->'"),
        ("res2:5>2.5", "no '->'"),
        ("res2:5>2.5 => stop", "no '->'"),
        ("res2:5 -> stop", "no '>'"),
        ("res2>2 -> stop", "bad feature 'res2': expected SAE:FEATURE"),
        (">2 -> stop", "bad feature '': expected SAE:FEATURE"),
        ("res2:x>2 -> stop", "feature must be a non-negative integer, got 'x'"),
        ("res2:-5>2 -> stop", "feature must be a non-negative integer"),
        ("res2:4294967296>2 -> stop", "larger than 4294967295"),
        ("res2:5=set:1>2 -> stop", "no '='"),
        ("res2:5> -> stop", "no threshold after '>'"),
        ("res2:5>abc -> stop", "threshold must be a number, got 'abc'"),
        ("res2:5>inf -> stop", "threshold must be finite, got 'inf'"),
        ("res2:5>-inf -> stop", "threshold must be finite"),
        ("res2:5>nan -> stop", "threshold must be finite, got 'nan'"),
        ("res2:5>1e39 -> stop", "threshold must be finite"),  # a float32 would read inf
        ("res2:5>1 ->", "no action after '->'"),
        ("res2:5>1 ->   ", "no action after '->'"),
        ("res2:5>1 -> halt", "bad edit 'halt': expected SAE:FEATURE=MODE"),
        ("res2:5>1 -> res2:9=boost:1", "unknown mode 'boost'"),
        ("res2:5>1 -> res2:9=set", "set needs a value"),
        ("res2:5>1 -> res2:9=set:1,", "edit 2 after '->' is empty"),
        ("res2:5>1 -> ,res2:9=set:1", "edit 1 after '->' is empty"),
        ("res2:5>1 -> stop, res2:9=set:1", "give one action: stop, or edits to apply, not both"),
        ("res2:5>1 -> res2:9=set:1, stop", "give one action"),
    ],
)
def test_parse_rule_refuses_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"bad rule {text!r}: ")) as caught:
        parse_rule(text)
    assert why in str(caught.value)


def test_rule_needs_exactly_one_action() -> None:
    when = FeatureRef("res2", 5)
    with pytest.raises(ValueError, match="exactly one action"):
        Rule(when, 1.0)
    with pytest.raises(ValueError, match="exactly one action"):
        Rule(when, 1.0, apply=(Edit.set("res2", 1, 1.0),), stop=True)


@pytest.mark.parametrize("above", [float("nan"), float("inf"), -float("inf"), 1e39])
def test_rule_threshold_must_be_finite(above: float) -> None:
    with pytest.raises(ValueError, match="above must be a finite number"):
        Rule.stop_when("res2", 5, above)


def test_rule_checks_its_parts() -> None:
    with pytest.raises(ValueError, match="SAE name is empty"):
        Rule.stop_when("", 5, 1.0)
    with pytest.raises(ValueError, match="not an Edit"):
        Rule(FeatureRef("res2", 5), 1.0, apply=("res2:1=set:1",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="when must be a FeatureRef"):
        Rule(("res2", 5), 1.0, stop=True)  # type: ignore[arg-type]


def test_rule_keeps_a_list_of_edits_as_a_tuple() -> None:
    edits = [Edit.set("res2", 1, 1.0)]
    rule = Rule(FeatureRef("res2", 5), 1.0, apply=edits)  # type: ignore[arg-type]
    assert rule.apply == (Edit.set("res2", 1, 1.0),)
    hash(rule)  # frozen, and hashable as a tuple of edits


def test_to_proto_of_a_stop_rule() -> None:
    msg = Rule.stop_when("res2", 5, -1.5).to_proto()
    assert msg.WhichOneof("then") == "stop"
    assert msg == pb.Rule(when=pb.FeatureRef(sae="res2", feature=5), above=-1.5, stop=True)


def test_to_proto_of_an_apply_rule() -> None:
    edits = (Edit.set("res2", 9, 4.0), Edit.ablate("res2", 3, only_when_active=True))
    msg = Rule.apply_when("res2", 5, 2.5, *edits).to_proto()
    assert msg.WhichOneof("then") == "apply"
    assert (msg.when.sae, msg.when.feature, msg.above) == ("res2", 5, 2.5)
    assert list(msg.apply.edits) == [e.to_proto() for e in edits]


ROUND_TRIPS = [
    (Rule.stop_when("res2", 5, 2.5), "res2:5>2.5 -> stop"),
    (Rule.stop_when("res2", 5, -1.0), "res2:5>-1 -> stop"),
    (Rule.stop_when("res2", 5, 1 / 3), "res2:5>0.3333333333333333 -> stop"),  # exact, not %g
    (Rule.stop_when("res2", 5, 1e-7), "res2:5>1e-07 -> stop"),
    (
        Rule.apply_when(
            "gemma:res:12",
            0,
            0.0,
            Edit.set("res2", 9, 4.0),
            Edit.ablate("res2", 3, only_when_active=True),
        ),
        "gemma:res:12:0>0 -> res2:9=set:4, res2:3=ablate@active",
    ),
]


@pytest.mark.parametrize(("rule", "text"), ROUND_TRIPS, ids=[text for _, text in ROUND_TRIPS])
def test_str_is_the_cli_form_that_parse_rule_reads_back(rule: Rule, text: str) -> None:
    assert str(rule) == text
    assert parse_rule(text) == rule
    assert parse_rule(str(rule)).to_proto() == rule.to_proto()
