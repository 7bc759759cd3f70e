"""Feature label files: Neuronpedia explanation exports and JSON Lines, per SAE.

Reads `index`/`description` (or `feature`/`label`), and where present a feature's typical maximum
(`maxActApprox`, Neuronpedia's field, or `maxActivation`), firing frequency (`frac_nonzero`
or `frequency`) and top contexts (`topContexts`: a list of strings; entries that are not
strings are skipped); every other field is ignored. A typical maximum that is not a finite positive
number, or a frequency outside (0, 1], is unknown (kept as absent), not an error: exports write
0 for features they never saw fire. Every other problem is a `LabelFileError` naming the file
and the entry or line. Labels longer than
`MAX_LABEL_CHARS` are cut there (ending in "…"), so a label never outgrows a reply.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from steering.errors import SteeringError

EXPLANATIONS_FILE = "explanations.json"
MAX_LABEL_CHARS = 200  # characters of one label, "…" included where it was cut
MAX_INDEX_DIGITS = 32  # longer is no feature index (and int() refuses past 4,300 digits)


class LabelFileError(SteeringError):
    """A label file is missing, unreadable or malformed, or names a feature the SAE lacks."""


# ---------------------------------------------------------------------------- label files


def labels_beside(sae_file: Path) -> Path | None:
    """The `explanations.json` next to an SAE's parameter file (or in its folder), if any."""
    folder = sae_file if sae_file.is_dir() else sae_file.parent
    candidate = folder / EXPLANATIONS_FILE
    return candidate if candidate.is_file() else None


MAX_FIELDS = ("maxActApprox", "maxActivation")  # a feature's typical maximum, first found wins
FREQUENCY_FIELDS = ("frac_nonzero", "frequency")
CONTEXTS_FIELD = "topContexts"
MAX_CONTEXTS = 20  # top contexts kept per feature, the first ones
MAX_CONTEXT_CHARS = 400  # characters of one context, "…" included where it was cut


@dataclass(frozen=True)
class LabelFile:
    """What one label file says per feature: labels, typical maxima, frequencies and top
    contexts (each only where known)."""

    labels: dict[int, str] = field(default_factory=dict)
    typical_max: dict[int, float] = field(default_factory=dict)
    frequency: dict[int, float] = field(default_factory=dict)
    top_contexts: dict[int, tuple[str, ...]] = field(default_factory=dict)


def load_labels(path: str | Path, d_sae: int) -> dict[int, str]:
    """Feature -> label from a label file; a feature's first non-empty label wins."""
    return load_label_file(path, d_sae).labels


def load_label_file(path: str | Path, d_sae: int) -> LabelFile:
    """A label file's labels, typical maxima and frequencies; for each feature the first entry
    that gives one wins."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeError) as exc:
        raise LabelFileError(f"{path}: cannot read the label file ({exc})") from exc
    is_array = text.lstrip().startswith("[")
    entries = _array_entries(path, text) if is_array else _line_entries(path, text)
    out = LabelFile()
    for where, raw_index, raw_label, item in entries:
        feature = _feature_index(raw_index, d_sae, where)
        label = _label_text(raw_label, where)
        if label and feature not in out.labels:
            out.labels[feature] = label
        top = _first_number(item, MAX_FIELDS)
        if top is not None and top > 0 and feature not in out.typical_max:
            out.typical_max[feature] = top
        share = _first_number(item, FREQUENCY_FIELDS)
        if share is not None and 0 < share <= 1 and feature not in out.frequency:
            out.frequency[feature] = share
        contexts = _contexts(item.get(CONTEXTS_FIELD))
        if contexts and feature not in out.top_contexts:
            out.top_contexts[feature] = contexts
    return out


def _contexts(raw: object) -> tuple[str, ...]:
    """The readable top contexts of an entry: its non-empty strings (trimmed, cut at
    `MAX_CONTEXT_CHARS`), at most `MAX_CONTEXTS`; anything else (objects of other exports,
    numbers, text no reply can carry) is skipped, never an error."""
    if not isinstance(raw, list):
        return ()
    out: list[str] = []
    for item in raw:
        if len(out) == MAX_CONTEXTS:
            break
        if not isinstance(item, str) or not item.strip():
            continue
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate
            continue
        text = item.strip()
        if len(text) > MAX_CONTEXT_CHARS:
            text = text[: MAX_CONTEXT_CHARS - 1].rstrip() + "…"
        out.append(text)
    return tuple(out)


# (where, for errors), raw index, raw label, the whole entry
Entry = tuple[str, object, object, dict[str, object]]


def _first_number(item: dict[str, object], keys: tuple[str, ...]) -> float | None:
    """The first of `keys` that holds a finite number (or a string of one); None when none."""
    for key in keys:
        raw = item.get(key)
        if isinstance(raw, bool) or raw is None:
            continue
        try:
            value = float(raw) if isinstance(raw, int | float | str) else math.nan
        except (ValueError, OverflowError):
            continue
        if math.isfinite(value):
            return value
    return None


def _array_entries(path: Path, text: str) -> Iterator[Entry]:
    """A Neuronpedia export: a JSON array of objects with `index` and `description`."""
    try:
        data = _json(text)
    except json.JSONDecodeError as exc:
        raise LabelFileError(f"{path}: malformed JSON at line {exc.lineno}: {exc.msg}") from exc
    except RecursionError:
        raise LabelFileError(f"{path}: malformed JSON: nested too deeply") from None
    if not isinstance(data, list):  # "[" opens an array, but keep mypy and odd inputs honest
        raise LabelFileError(f"{path}: expected a JSON array")
    for position, item in enumerate(data):
        where = f"{path}: entry [{position}]"
        obj = _object(item, where)
        yield where, _field(obj, "index", where), _field(obj, "description", where), obj


def _line_entries(path: Path, text: str) -> Iterator[Entry]:
    """JSON Lines of `{"feature": i, "label": "..."}`; blank lines are skipped."""
    # Split on "\n" only: str.splitlines would also cut at U+2028 inside JSON strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = _json(line)
        except json.JSONDecodeError as exc:
            raise LabelFileError(f"{where}: malformed JSON: {exc.msg}") from exc
        except RecursionError:
            raise LabelFileError(f"{where}: malformed JSON: nested too deeply") from None
        obj = _object(item, where)
        yield where, _field(obj, "feature", where), _field(obj, "label", where), obj


@dataclass(frozen=True)
class _LongNumber:
    """A JSON integer too long to be a feature index, kept as its length."""

    digits: int

    def __repr__(self) -> str:
        return f"<a number of {self.digits} digits>"


def _json(text: str) -> object:
    # Python's int() refuses numbers past 4,300 digits with a ValueError: keep them apart.
    return json.loads(
        text, parse_int=lambda s: int(s) if len(s) <= MAX_INDEX_DIGITS else _LongNumber(len(s))
    )


def _object(item: object, where: str) -> dict[str, object]:
    if not isinstance(item, dict):
        raise LabelFileError(f"{where}: expected a JSON object, got {type(item).__name__}")
    return item


def _field(item: dict[str, object], key: str, where: str) -> object:
    if key not in item:
        raise LabelFileError(f"{where}: no {key!r} field")
    return item[key]


_DECIMAL = re.compile(r"\s*[+-]?[0-9]+\s*")


def _feature_index(raw: object, d_sae: int, where: str) -> int:
    # Neuronpedia writes indices as strings; JSON Lines writers use numbers. Floats are refused
    # rather than truncated: "3.5" is a broken file, not feature 3.
    if isinstance(raw, str) and _DECIMAL.fullmatch(raw) and len(raw.strip()) > MAX_INDEX_DIGITS:
        raw = _LongNumber(len(raw.strip().lstrip("+-")))
    if isinstance(raw, _LongNumber):
        raise LabelFileError(f"{where}: feature index {raw!r} is outside [0, {d_sae})")
    if isinstance(raw, int) and not isinstance(raw, bool):
        index = raw
    elif isinstance(raw, str) and _DECIMAL.fullmatch(raw):
        index = int(raw)
    else:
        raise LabelFileError(f"{where}: feature index {raw!r} is not an integer")
    if not 0 <= index < d_sae:
        raise LabelFileError(f"{where}: feature index {index} is outside [0, {d_sae})")
    return index


def _label_text(raw: object, where: str) -> str:
    if raw is None:  # an export's unexplained feature: no label, not an error
        return ""
    if not isinstance(raw, str):
        raise LabelFileError(f"{where}: label {raw!r:.60} is not a string")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:  # JSON's "\ud800" decodes to a str no reply can carry
        raise LabelFileError(f"{where}: label holds a lone surrogate (not Unicode text)") from None
    label = raw.strip()
    if len(label) > MAX_LABEL_CHARS:
        label = label[: MAX_LABEL_CHARS - 1].rstrip() + "…"
    return label
