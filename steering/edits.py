"""Feature edits as a request asks for them: the modes, the frozen `FeatureEdit`, and the one
check of a request's edits against the served SAEs. No tensors: the math is `steering.steer`'s.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from steering.errors import InvalidEditError

# A finite but huge edit (>= ~1e20 in float32) silently zeroes the next RMSNorm: cap magnitudes.
DEFAULT_MAX_ABS_VALUE = 1e4


class EditMode(enum.Enum):
    SET = "set"
    ADD = "add"
    SCALE = "scale"
    ABLATE = "ablate"


@dataclass(frozen=True)
class FeatureEdit:
    """One edit of one SAE feature, as a request asks for it."""

    sae: str
    feature: int
    mode: EditMode
    value: float = 0.0
    only_when_active: bool = False  # apply only at positions where the feature fires (f > 0)
    # `value` is a multiple of the feature's typical maximum (set and add only); resolved into
    # an absolute value by `resolve_relative` before validation, so the engine never sees one.
    relative: bool = False


RELATIVE_MODES = (EditMode.SET, EditMode.ADD)


def resolve_relative(
    edits: Sequence[FeatureEdit],
    typical_max: Callable[[str, int], float],
    d_sae_of: Mapping[str, int],
) -> tuple[FeatureEdit, ...]:
    """The edits with every relative one made absolute: value x the feature's typical maximum
    (`typical_max` gives 0 where unknown). An edit that cannot be resolved (unknown SAE or
    feature, a mode without a value, no typical maximum) stays relative, for `validate_edits`
    to refuse with the field it names."""
    out = []
    for edit in edits:
        if edit.relative and edit.mode in RELATIVE_MODES and edit.sae in d_sae_of:
            top = (
                typical_max(edit.sae, edit.feature) if 0 <= edit.feature < d_sae_of[edit.sae] else 0
            )
            if top > 0 and math.isfinite(top):
                edit = replace(edit, value=edit.value * top, relative=False)
        out.append(edit)
    return tuple(out)


def validate_edits(
    edits: Sequence[FeatureEdit],
    d_sae_of: Mapping[str, int],
    *,
    max_abs_value: float = DEFAULT_MAX_ABS_VALUE,
    field: str = "edits",
) -> tuple[FeatureEdit, ...]:
    """Check one request's edits against the served SAEs (name -> width); returns them frozen."""
    seen: set[tuple[str, int]] = set()
    for i, edit in enumerate(edits):
        where = f"{field}[{i}]"
        if edit.sae not in d_sae_of:
            known = ", ".join(sorted(d_sae_of)) or "none"
            raise InvalidEditError(f"{where}.sae", f"unknown SAE {edit.sae!r} (served: {known})")
        if not isinstance(edit.mode, EditMode):
            raise InvalidEditError(f"{where}.mode", f"unknown edit mode {edit.mode!r}")
        width = d_sae_of[edit.sae]
        if not 0 <= edit.feature < width:
            raise InvalidEditError(
                f"{where}.feature",
                f"feature {edit.feature} is out of range for SAE {edit.sae!r} (width {width})",
            )
        if edit.relative:
            why = (
                f"a relative value applies to set and add only, not {edit.mode.value}"
                if edit.mode not in RELATIVE_MODES
                else f"feature {edit.feature} of SAE {edit.sae!r} has no typical maximum "
                "(the label file gives none): give an absolute value"
            )
            raise InvalidEditError(f"{where}.relative", why)
        if not math.isfinite(edit.value):
            raise InvalidEditError(f"{where}.value", f"value must be finite, got {edit.value}")
        if not abs(edit.value) <= max_abs_value:
            raise InvalidEditError(
                f"{where}.value", f"|value| must be at most {max_abs_value:g}, got {edit.value:g}"
            )
        key = (edit.sae, edit.feature)
        if key in seen:
            raise InvalidEditError(
                f"{where}.feature",
                f"feature {edit.feature} of SAE {edit.sae!r} is edited twice in one request",
            )
        seen.add(key)
    return tuple(edits)
