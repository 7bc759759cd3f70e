"""The edit grammar of the CLI, the Edit dataclass's checks, and its proto form."""

from __future__ import annotations

import pytest

from steering_client import Edit, parse_edit
from steering_client.edits import parse_edits
from steering_proto.v1 import steering_pb2 as pb


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("res12:1234=set:8", Edit("res12", 1234, "set", 8.0)),
        ("res12:0=add:-0.25", Edit("res12", 0, "add", -0.25)),
        ("res12:7=scale:1e-3@active", Edit("res12", 7, "scale", 1e-3, only_when_active=True)),
        ("res12:7=ablate", Edit("res12", 7, "ablate")),
        ("res12:7=ablate@active", Edit("res12", 7, "ablate", only_when_active=True)),
        ("  res12:3=SET:2 ", Edit("res12", 3, "set", 2.0)),
        ("gemma:res:12:5=add:1", Edit("gemma:res:12", 5, "add", 1.0)),  # ':' inside the SAE name
        ("res12:4294967295=set:1", Edit("res12", 2**32 - 1, "set", 1.0)),
        ("demo:632=set:1.5x", Edit("demo", 632, "set", 1.5, relative=True)),
        ("demo:632=add:-0.5x@active", Edit("demo", 632, "add", -0.5, True, relative=True)),
    ],
)
def test_parse_edit_accepts(text: str, expected: Edit) -> None:
    assert parse_edit(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "expected SAE:FEATURE=MODE"),
        ("res12=set:8", "expected SAE:FEATURE=MODE"),
        (":12=set:8", "expected SAE:FEATURE=MODE"),
        ("res12:1234", "expected SAE:FEATURE=MODE"),
        ("res12:x=set:8", "non-negative integer"),
        ("res12:-1=set:8", "non-negative integer"),
        ("res12:=set:8", "non-negative integer"),
        ("res12:4294967296=set:1", "larger than"),
        ("res12:1=boost:2", "unknown mode 'boost'"),
        ("res12:1=set", "set needs a value"),
        ("res12:1=scale:", "scale needs a value"),
        ("res12:1=ablate:3", "ablate takes no value"),
        ("res12:1=add:abc", "must be a number"),
        ("res12:1=add:nan", "finite"),
        ("res12:1=add:-inf", "finite"),
        ("res12:1=set:8@sometimes", "unknown suffix '@sometimes' (did you mean @active?)"),
        ("demo:632=set:490@activ", "unknown suffix '@activ' (did you mean @active?)"),
        ("demo:632=ablate@actve", "unknown suffix '@actve' (did you mean @active?)"),
        ("demo:632=scale:2x", "applies to set and add only"),
        ("demo:632=set:x", "set needs a value"),
        ("demo:632=set:1.5xx", "must be a number"),
    ],
)
def test_parse_edit_rejects_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(ValueError, match="bad edit") as caught:
        parse_edit(text)
    assert why in str(caught.value)


def test_an_at_sign_in_the_sae_name_is_no_suffix() -> None:
    assert parse_edit("me@lab:3=set:1") == Edit("me@lab", 3, "set", 1.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a:1=set:2,b:3=set:4", [Edit.set("a", 1, 2.0), Edit.set("b", 3, 4.0)]),
        (
            "res2:1=ablate@active, g:res:2=add:-1 ,res2:9=scale:0.5",
            [
                Edit.ablate("res2", 1, only_when_active=True),
                Edit.add("g:res", 2, -1.0),
                Edit.scale("res2", 9, 0.5),
            ],
        ),
        ("res2:1=set:2", [Edit.set("res2", 1, 2.0)]),
    ],
)
def test_parse_edits_splits_at_commas_that_start_an_edit(text: str, expected: list[Edit]) -> None:
    assert parse_edits(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a:1=set:2,5", "bad edit 'a:1=set:2,5': value must be a number, got '2,5'"),
        ("a:1=set:2,", "bad edit 'a:1=set:2,': value must be a number, got '2,'"),
        ("a:1=set:2,b:x=set:4", "bad edit 'b:x=set:4': feature must be a non-negative integer"),
    ],
)
def test_parse_edits_names_the_bad_edit(text: str, why: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_edits(text)
    assert why in str(caught.value)


@pytest.mark.parametrize(
    "edit",
    [
        Edit.set("res12", 5, 8.0),
        Edit.add("res12", 5, -2.5, only_when_active=True),
        Edit.scale("a:b", 0, 0.5),
        Edit.ablate("res12", 9, only_when_active=True),
        Edit("demo", 632, "set", 1.5, relative=True),
    ],
)
def test_str_round_trips_through_parse_edit(edit: Edit) -> None:
    assert parse_edit(str(edit)) == edit


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"sae": "", "feature": 1, "mode": "set", "value": 1.0}, "SAE name is empty"),
        ({"sae": "r", "feature": -1, "mode": "set", "value": 1.0}, "feature must be in"),
        ({"sae": "r", "feature": 2**32, "mode": "set", "value": 1.0}, "feature must be in"),
        ({"sae": "r", "feature": 1, "mode": "boost", "value": 1.0}, "unknown mode"),
        ({"sae": "r", "feature": 1, "mode": "add", "value": float("nan")}, "finite"),
        ({"sae": "r", "feature": 1, "mode": "ablate", "value": 2.0}, "takes no value"),
        (
            {"sae": "r", "feature": 1, "mode": "scale", "value": 2.0, "relative": True},
            "set and add",
        ),
    ],
)
def test_edit_rejects_impossible_edits(kwargs: dict[str, object], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        Edit(**kwargs)  # type: ignore[arg-type]


def test_a_relative_edit_travels_as_relative() -> None:
    msg = Edit("demo", 632, "set", 1.5, relative=True).to_proto()
    assert (msg.value, msg.relative) == (1.5, True)
    assert Edit.from_proto(msg) == Edit("demo", 632, "set", 1.5, relative=True)


def test_to_proto_carries_every_field() -> None:
    msg = Edit.scale("res12", 1234, 0.5, only_when_active=True).to_proto()
    assert isinstance(msg, pb.FeatureEdit)
    assert (msg.sae, msg.feature, msg.mode, msg.value, msg.only_when_active) == (
        "res12",
        1234,
        pb.EDIT_MODE_SCALE,
        0.5,
        True,
    )


@pytest.mark.parametrize("mode", ["set", "add", "scale", "ablate"])
def test_each_mode_maps_to_its_proto_enum(mode: str) -> None:
    value = 0.0 if mode == "ablate" else 3.0
    msg = Edit("res12", 1, mode, value).to_proto()
    assert pb.EditMode.Name(msg.mode) == f"EDIT_MODE_{mode.upper()}"
    assert msg.value == value
    assert not msg.only_when_active
