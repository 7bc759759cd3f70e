"""Features as the client names them: edits (`Edit`) and plain references (`FeatureRef`), their
proto forms, and their CLI grammars (`SAE:FEATURE=MODE[:VALUE][@active]`, several joined by
commas, and `SAE:FEATURE`).

Checks only what the client can know (mode, value present and finite, index in uint32 range);
whether an SAE or feature exists, and value bounds, are the server's to judge.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from steering_proto.v1 import steering_pb2 as pb

# The registry of edit modes: CLI / dataclass name -> proto enum value.
MODE_TO_PROTO: dict[str, pb.EditMode.ValueType] = {
    "set": pb.EDIT_MODE_SET,
    "add": pb.EDIT_MODE_ADD,
    "scale": pb.EDIT_MODE_SCALE,
    "ablate": pb.EDIT_MODE_ABLATE,
}
PROTO_TO_MODE: dict[int, str] = {value: name for name, value in MODE_TO_PROTO.items()}
VALUELESS_MODES = frozenset({"ablate"})
MAX_FEATURE = 2**32 - 1  # FeatureEdit.feature is a uint32

GRAMMAR = "SAE:FEATURE=MODE[:VALUE][@active]"  # a VALUE may end in x: relative
RELATIVE_MODES = frozenset({"set", "add"})
REF_GRAMMAR = "SAE:FEATURE"
_ACTIVE_SUFFIX = "@active"
# SAE names may hold ':' themselves: the feature is what follows the last ':' before '='.
_SHAPE = re.compile(r"^(?P<sae>.+):(?P<feature>[^:=]*)=(?P<mode>[^:]*)(?::(?P<value>.*))?$")
# A comma that starts another edit (`,SAE:FEATURE=`); one inside a value (`set:2,5`) does not.
_EDIT_START = re.compile(r",(?=[^,=]*:[^:=,]*=)")


@dataclass(frozen=True)
class Edit:
    """One edit of one SAE feature: f' = value (set), f + value (add), value·f (scale), 0 (ablate).

    With `only_when_active`, the edit applies only at positions where the feature is active.
    With `relative` (set and add only), `value` is a multiple of the feature's typical maximum
    (`FeatureMatch.typical_max`); the server turns it into the absolute value it applies.
    """

    sae: str
    feature: int
    mode: str
    value: float = 0.0
    only_when_active: bool = False
    relative: bool = False

    def __post_init__(self) -> None:
        if not self.sae:
            raise ValueError("edit: the SAE name is empty")
        if self.mode not in MODE_TO_PROTO:
            raise ValueError(
                f"edit: unknown mode {self.mode!r} (one of {', '.join(MODE_TO_PROTO)})"
            )
        if not 0 <= self.feature <= MAX_FEATURE:
            raise ValueError(f"edit: feature must be in [0, {MAX_FEATURE}], got {self.feature}")
        if not math.isfinite(self.value):
            raise ValueError(f"edit: value must be finite, got {self.value}")
        if self.mode in VALUELESS_MODES and self.value != 0.0:
            raise ValueError(f"edit: {self.mode} takes no value, got {self.value:g}")
        if self.relative and self.mode not in RELATIVE_MODES:
            raise ValueError(f"edit: a relative value applies to set and add only, not {self.mode}")

    @classmethod
    def set(cls, sae: str, feature: int, value: float, *, only_when_active: bool = False) -> Edit:
        """f' = value."""
        return cls(sae, feature, "set", value, only_when_active)

    @classmethod
    def add(cls, sae: str, feature: int, value: float, *, only_when_active: bool = False) -> Edit:
        """f' = f + value."""
        return cls(sae, feature, "add", value, only_when_active)

    @classmethod
    def scale(
        cls, sae: str, feature: int, factor: float, *, only_when_active: bool = False
    ) -> Edit:
        """f' = factor * f."""
        return cls(sae, feature, "scale", factor, only_when_active)

    @classmethod
    def ablate(cls, sae: str, feature: int, *, only_when_active: bool = False) -> Edit:
        """f' = 0."""
        return cls(sae, feature, "ablate", 0.0, only_when_active)

    def to_proto(self) -> pb.FeatureEdit:
        return pb.FeatureEdit(
            sae=self.sae,
            feature=self.feature,
            mode=MODE_TO_PROTO[self.mode],
            value=self.value,
            only_when_active=self.only_when_active,
            relative=self.relative,
        )

    @classmethod
    def from_proto(cls, msg: pb.FeatureEdit) -> Edit:
        """The edit a FeatureEdit describes (an ablate's ignored value reads as 0).

        Raises ValueError for a mode these stubs do not know.
        """
        mode = PROTO_TO_MODE.get(msg.mode)
        if mode is None:
            raise ValueError(f"edit: unknown mode {msg.mode} of {msg.sae}:{msg.feature}")
        value = 0.0 if mode in VALUELESS_MODES else msg.value
        relative = msg.relative and mode in RELATIVE_MODES
        return cls(msg.sae, msg.feature, mode, value, msg.only_when_active, relative)

    def __str__(self) -> str:
        """The CLI form, which `parse_edit` reads back."""
        value = "" if self.mode in VALUELESS_MODES else f":{self.value:g}"
        value += "x" if self.relative else ""
        active = _ACTIVE_SUFFIX if self.only_when_active else ""
        return f"{self.sae}:{self.feature}={self.mode}{value}{active}"


@dataclass(frozen=True)
class FeatureRef:
    """One feature of one SAE, named without changing it: to watch, or to inspect."""

    sae: str
    feature: int

    def __post_init__(self) -> None:
        if not self.sae:
            raise ValueError("feature: the SAE name is empty")
        if not 0 <= self.feature <= MAX_FEATURE:
            raise ValueError(f"feature: index must be in [0, {MAX_FEATURE}], got {self.feature}")

    def to_proto(self) -> pb.FeatureRef:
        return pb.FeatureRef(sae=self.sae, feature=self.feature)

    def __str__(self) -> str:
        """The CLI form, which `parse_feature_ref` reads back."""
        return f"{self.sae}:{self.feature}"


def parse_feature_ref(text: str) -> FeatureRef:
    """Read `SAE:FEATURE`, e.g. `res12:1234`; the SAE name may hold ':' (not '=').

    The feature is what follows the last ':'. Raises ValueError naming what is wrong.
    """
    spec = text.strip()
    sae, colon, raw = spec.rpartition(":")
    sae = sae.strip()
    if not colon or not sae:
        raise _bad_ref(text, f"expected {REF_GRAMMAR}, e.g. res12:1234")
    if "=" in spec:
        raise _bad_ref(text, f"expected {REF_GRAMMAR} (no '='; an edit is not a feature)")
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()):
        raise _bad_ref(text, f"feature must be a non-negative integer, got {raw!r}")
    feature = int(raw)
    if feature > MAX_FEATURE:
        raise _bad_ref(text, f"feature {feature} is larger than {MAX_FEATURE}")
    return FeatureRef(sae, feature)


def parse_edit(text: str) -> Edit:
    """Read `SAE:FEATURE=MODE[:VALUE[x]][@active]`, e.g. `res12:1234=set:8`, `res12:7=ablate@active`
    or `res12:1234=set:1.5x` (1.5 times the feature's typical maximum).

    MODE is set, add, scale or ablate; ablate takes no VALUE, the others need one; a VALUE ending
    in `x` (set and add only) is relative.
    Raises ValueError naming what is wrong.
    """
    spec = text.strip()
    _check_suffix(text, spec)
    active = spec.endswith(_ACTIVE_SUFFIX)
    if active:
        spec = spec[: -len(_ACTIVE_SUFFIX)]
    match = _SHAPE.match(spec)
    if match is None:
        raise _bad(text, f"expected {GRAMMAR}")
    mode = match["mode"].strip().lower()
    if mode not in MODE_TO_PROTO:
        raise _bad(text, f"unknown mode {match['mode']!r} (one of {', '.join(MODE_TO_PROTO)})")
    feature = _parse_feature(text, match["feature"])
    raw = match["value"]
    relative = raw is not None and raw.strip().endswith("x")
    if relative:
        if mode not in RELATIVE_MODES:
            raise _bad(text, "a relative value (x) applies to set and add only")
        raw = raw.strip().removesuffix("x")
    value = _parse_value(text, mode, raw)
    return Edit(match["sae"].strip(), feature, mode, value, active, relative)


def parse_edits(text: str) -> list[Edit]:
    """Read one edit or several joined by commas, e.g. `res12:1=set:8,res12:9=ablate@active`.

    A comma splits only where an edit (`SAE:FEATURE=`) starts after it. Raises ValueError
    naming the edit that is wrong.
    """
    return [parse_edit(part) for part in _EDIT_START.split(text)]


def _check_suffix(text: str, spec: str) -> None:
    """Refuse an '@' suffix other than @active, e.g. a mistyped `set:490@activ`."""
    action = spec.rpartition("=")[2]  # an SAE name may hold '@'; the suffix follows the '='
    at, suffix = action.partition("@")[1:]
    if at and at + suffix != _ACTIVE_SUFFIX:
        raise _bad(text, f"unknown suffix '@{suffix}' (did you mean {_ACTIVE_SUFFIX}?)")


def _parse_feature(text: str, raw: str) -> int:
    raw = raw.strip()
    if not raw.isdigit():
        raise _bad(text, f"feature must be a non-negative integer, got {raw!r}")
    feature = int(raw)
    if feature > MAX_FEATURE:
        raise _bad(text, f"feature {feature} is larger than {MAX_FEATURE}")
    return feature


def _parse_value(text: str, mode: str, raw: str | None) -> float:
    if mode in VALUELESS_MODES:
        if raw is not None:
            raise _bad(text, f"{mode} takes no value")
        return 0.0
    if raw is None or not raw.strip():
        raise _bad(text, f"{mode} needs a value, e.g. {mode}:2")
    try:
        value = float(raw)
    except ValueError:
        raise _bad(text, f"value must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise _bad(text, f"value must be finite, got {raw!r}")
    return value


def _bad(text: str, why: str) -> ValueError:
    return ValueError(f"bad edit {text!r}: {why}")


def _bad_ref(text: str, why: str) -> ValueError:
    return ValueError(f"bad feature {text!r}: {why}")
