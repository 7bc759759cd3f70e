"""Feature label files: Neuronpedia explanation exports and JSON Lines, per SAE.

Reads `index`/`description` (or `feature`/`label`) and ignores every other field; every problem
is a `LabelFileError` naming the file and the entry or line. Labels longer than
`MAX_LABEL_CHARS` are cut there (ending in "…"), so a label never outgrows a reply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
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


def load_labels(path: str | Path, d_sae: int) -> dict[int, str]:
    """Feature -> label from a label file; a feature's first non-empty label wins."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeError) as exc:
        raise LabelFileError(f"{path}: cannot read the label file ({exc})") from exc
    is_array = text.lstrip().startswith("[")
    entries = _array_entries(path, text) if is_array else _line_entries(path, text)
    labels: dict[int, str] = {}
    for where, raw_index, raw_label in entries:
        feature = _feature_index(raw_index, d_sae, where)
        label = _label_text(raw_label, where)
        if label and feature not in labels:
            labels[feature] = label
    return labels


Entry = tuple[str, object, object]  # (where, for errors), raw index, raw label


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
        yield where, _field(item, "index", where), _field(item, "description", where)


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
        yield where, _field(item, "feature", where), _field(item, "label", where)


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


def _field(item: object, key: str, where: str) -> object:
    if not isinstance(item, dict):
        raise LabelFileError(f"{where}: expected a JSON object, got {type(item).__name__}")
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
