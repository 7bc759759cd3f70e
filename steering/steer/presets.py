"""Presets: named edit sets from a TOML file, written in the CLI's edit syntax, optionally pinned
to the SAE files they were written for (sha256), so a recipe never lands on another SAE.

    [presets.calm]
    description = "calm sea"
    edits = ["res12:1234=set:8", "res12:77=ablate", "res20:5=add:2@active", "res20:9=set:1.5x"]

A value ending in `x` is relative: that many times the feature's typical maximum (from its label
file), resolved once when the presets are loaded.
    sha256 = { res12 = "<lowercase hex of the SAE's parameter file>" }
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steering.edits import EditMode, FeatureEdit, resolve_relative, validate_edits
from steering.errors import InvalidRequestError, SteeringError
from steering.requests import Limits

# SAE:FEATURE=MODE[:VALUE][@active]; SAE names may hold ':' (the feature follows the last one).
EDIT = re.compile(r"^(?P<sae>.+):(?P<feature>\d+)=(?P<mode>[a-z]+)(?::(?P<value>[^@]+))?$")
ACTIVE = "@active"


class PresetFileError(SteeringError):
    """A presets file that cannot be served (the message names the file and the preset)."""


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    edits: tuple[FeatureEdit, ...]


def parse_edit(text: str) -> FeatureEdit:
    """`SAE:FEATURE=MODE[:VALUE[x]][@active]`, as the client's CLI writes edits (`x`: the value
    is relative, that many times the feature's typical maximum); ValueError if not."""
    spec = text.strip()
    active = spec.endswith(ACTIVE)
    match = EDIT.match(spec.removesuffix(ACTIVE))
    if match is None:
        raise ValueError(f"expected SAE:FEATURE=MODE[:VALUE][@active], got {text!r}")
    try:
        mode = EditMode(match["mode"])
    except ValueError:
        raise ValueError(f"unknown mode {match['mode']!r} in {text!r}") from None
    raw = match["value"]
    if (raw is None) != (mode is EditMode.ABLATE):
        raise ValueError(f"{mode.value} {'takes no' if raw else 'needs a'} value in {text!r}")
    relative = raw is not None and raw.rstrip().endswith("x")
    if relative and mode not in (EditMode.SET, EditMode.ADD):
        raise ValueError(f"a relative value (x) applies to set and add only, in {text!r}")
    value = float(raw.rstrip().removesuffix("x")) if raw is not None else 0.0
    if not math.isfinite(value):
        raise ValueError(f"the value must be finite in {text!r}")
    return FeatureEdit(match["sae"], int(match["feature"]), mode, value, active, relative)


def load_presets(
    path: str | Path,
    d_sae_of: Mapping[str, int],
    sha256_of: Mapping[str, str],
    limits: Limits | None = None,
    typical_max: Callable[[str, int], float] | None = None,
) -> dict[str, Preset]:
    """The presets of a TOML file, checked against the served SAEs (width, pinned sha256) and
    the limits in force (a preset a request could not carry would fail every request); relative
    edits resolved through `typical_max` (0 unknown: such an edit is refused)."""
    file = Path(path)
    try:
        tables = _toml(file).get("presets", {})
    except (OSError, ValueError) as exc:
        raise PresetFileError(f"{file}: {_first_line(exc)}") from exc
    except RecursionError:
        raise PresetFileError(f"{file}: malformed TOML: nested too deeply") from None
    if not isinstance(tables, dict):
        raise PresetFileError(f"{file}: expected [presets.NAME] tables")
    limits = limits or Limits()
    return {
        name: _preset(file, name, table, d_sae_of, sha256_of, limits, typical_max or _unknown)
        for name, table in tables.items()
    }


def _unknown(sae: str, feature: int) -> float:
    return 0.0


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _toml(file: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib.loads(file.read_text())
    raise ValueError("presets need Python 3.11+ (tomllib)")


def _preset(
    file: Path,
    name: str,
    table: Any,
    d_sae_of: Mapping[str, int],
    sha256_of: Mapping[str, str],
    limits: Limits,
    typical_max: Callable[[str, int], float],
) -> Preset:
    where = f"{file}: preset {name!r}"
    if not isinstance(table, dict) or not isinstance(table.get("edits", []), list):
        raise PresetFileError(f"{where}: expected a table with an `edits` list")
    try:
        edits = tuple(parse_edit(str(text)) for text in table.get("edits", []))
        edits = resolve_relative(edits, typical_max, d_sae_of)
        validate_edits(edits, d_sae_of, max_abs_value=limits.max_abs_edit_value)
    except (ValueError, InvalidRequestError) as exc:
        raise PresetFileError(f"{where}: {exc}") from None
    if len(edits) > limits.max_edits_per_request:
        raise PresetFileError(
            f"{where}: {len(edits)} edits, more than the limit of {limits.max_edits_per_request}"
        )
    for sae, count in sorted(Counter(e.sae for e in edits).items()):
        if count > limits.max_edits_per_sae:
            raise PresetFileError(
                f"{where}: {count} edits of SAE {sae!r}, more than the limit of "
                f"{limits.max_edits_per_sae}"
            )
    pins = table.get("sha256", {})
    if not isinstance(pins, dict):
        raise PresetFileError(f"{where}: sha256 must be a table of SAE = hex")
    for sae, digest in pins.items():
        if sae not in sha256_of:
            raise PresetFileError(f"{where}: pins SAE {sae!r}, which is not served")
        if str(digest).lower() != sha256_of[sae]:
            raise PresetFileError(
                f"{where}: pinned to another {sae!r} (sha256 {digest}, served {sha256_of[sae]})"
            )
    return Preset(name, str(table.get("description", "")), edits)


def with_preset(edits: tuple[FeatureEdit, ...], preset: Preset) -> tuple[FeatureEdit, ...]:
    """The request's edits, then the preset's on features the request does not edit itself."""
    own = {(e.sae, e.feature) for e in edits}
    return edits + tuple(e for e in preset.edits if (e.sae, e.feature) not in own)
