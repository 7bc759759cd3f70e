"""Conditional steering as the client names it: `Rule`, its proto form, and its CLI grammar
(`SAE:FEATURE>ABOVE -> stop` or `SAE:FEATURE>ABOVE -> EDIT[, EDIT...]`).

A rule watches one feature (its activation before its SAE's own edits) at every steerable
position the request's forwards process and fires once, the first time it is above its
threshold: it then applies its edits from the next position on, or stops the request (finish
reason "condition"). The client checks only the shape (one action, a finite threshold); whether
the SAEs and features exist, and how the rule's edits combine with the request's, is the
server's to judge.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from steering_client.edits import GRAMMAR, Edit, FeatureRef, parse_edit, parse_feature_ref
from steering_proto.v1 import steering_pb2 as pb

RULE_GRAMMAR = "SAE:FEATURE>ABOVE -> stop | EDIT[, EDIT...]"
ARROW = "->"
STOP = "stop"
FLOAT32_MAX = 3.4028234663852886e38  # Rule.above is a float: anything larger reads as inf


@dataclass(frozen=True)
class Rule:
    """When feature `when` is above `above` at a steerable position p: apply `apply`'s edits
    from position p+1 on, or (`stop`) end the request with finish reason "condition".

    Exactly one action: a non-empty `apply`, or `stop=True`. `above` may be negative (raw
    steering vectors' features are). A list given as `apply` is kept as a tuple.
    """

    when: FeatureRef
    above: float
    apply: tuple[Edit, ...] = ()
    stop: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.when, FeatureRef):
            raise ValueError(f"rule: when must be a FeatureRef, got {self.when!r}")
        object.__setattr__(self, "apply", tuple(self.apply))
        for edit in self.apply:
            if not isinstance(edit, Edit):
                raise ValueError(f"rule: apply holds {edit!r}, not an Edit")
        if not _finite_float32(self.above):
            raise ValueError(f"rule: above must be a finite number, got {self.above}")
        if bool(self.apply) == bool(self.stop):
            raise ValueError("rule: give exactly one action, edits to apply or stop")

    @classmethod
    def stop_when(cls, sae: str, feature: int, above: float) -> Rule:
        """Stop the request the first time `sae:feature` is above `above`."""
        return cls(FeatureRef(sae, feature), above, stop=True)

    @classmethod
    def apply_when(cls, sae: str, feature: int, above: float, *edits: Edit) -> Rule:
        """Apply `edits` from the position after the first where `sae:feature` > `above`."""
        return cls(FeatureRef(sae, feature), above, apply=edits)

    def to_proto(self) -> pb.Rule:
        rule = pb.Rule(when=self.when.to_proto(), above=self.above)
        if self.stop:
            rule.stop = True
        else:
            rule.apply.edits.extend(edit.to_proto() for edit in self.apply)
        return rule

    def __str__(self) -> str:
        """The CLI form, which `parse_rule` reads back, e.g. `res12:5>2.5 -> stop`."""
        action = STOP if self.stop else ", ".join(str(edit) for edit in self.apply)
        return f"{self.when}>{_shortest(self.above)} {ARROW} {action}"


def parse_rule(text: str) -> Rule:
    """Read `SAE:FEATURE>ABOVE -> stop` or `SAE:FEATURE>ABOVE -> EDIT[, EDIT...]`.

    E.g. `res12:5>2.5 -> stop`, `res12:5>-1->res12:9=set:4, res12:3=ablate`. EDIT is the edit
    grammar (`SAE:FEATURE=MODE[:VALUE][@active]`); spaces around `->` and `,` are optional; the
    SAE names may hold ':'. Raises ValueError naming what is wrong.
    """
    condition, arrow, action = text.partition(ARROW)
    if not arrow:
        raise _bad(text, f"expected {RULE_GRAMMAR}: no '{ARROW}'")
    ref_text, gt, raw_above = condition.strip().rpartition(">")
    if not gt:
        raise _bad(text, f"expected SAE:FEATURE>ABOVE before '{ARROW}': no '>'")
    try:
        when = parse_feature_ref(ref_text)
    except ValueError as error:
        raise _bad(text, str(error)) from None
    above = _parse_above(text, raw_above)
    action = action.strip()
    if not action:
        raise _bad(text, f"no action after '{ARROW}' (stop, or edits {GRAMMAR})")
    if action.lower() == STOP:
        return Rule(when, above, stop=True)
    return Rule(when, above, apply=tuple(_parse_edits(text, action)))


def rules_to_proto(rules: Iterable[Rule | pb.Rule]) -> list[pb.Rule]:
    """The proto form of each rule (a `pb.Rule` is sent as it is)."""
    return [rule.to_proto() if isinstance(rule, Rule) else rule for rule in rules]


def _parse_above(text: str, raw: str) -> float:
    raw = raw.strip()
    if not raw:
        raise _bad(text, "no threshold after '>'")
    try:
        above = float(raw)
    except ValueError:
        raise _bad(text, f"threshold must be a number, got {raw!r}") from None
    if not _finite_float32(above):
        raise _bad(text, f"threshold must be finite, got {raw!r}")
    return above


def _parse_edits(text: str, action: str) -> list[Edit]:
    edits = []
    for i, part in enumerate(action.split(",")):
        if not part.strip():
            raise _bad(text, f"edit {i + 1} after '{ARROW}' is empty")
        if part.strip().lower() == STOP:
            raise _bad(text, "give one action: stop, or edits to apply, not both")
        try:
            edits.append(parse_edit(part))
        except ValueError as error:
            raise _bad(text, str(error)) from None
    return edits


def _finite_float32(value: float) -> bool:
    return math.isfinite(value) and abs(value) <= FLOAT32_MAX


def _shortest(value: float) -> str:
    """`value` as briefly as `float()` reads it back exactly: 2.5, -1, 1e-07."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def _bad(text: str, why: str) -> ValueError:
    return ValueError(f"bad rule {text!r}: {why}")
