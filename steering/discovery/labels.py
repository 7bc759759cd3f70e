"""Feature label files: Neuronpedia explanation exports and JSON Lines, per SAE.

Reads `index`/`description` (or `feature`/`label`) and ignores every other field; every problem
is a `LabelFileError` naming the file and the entry or line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from steering.errors import SteeringError

EXPLANATIONS_FILE = "explanations.json"


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
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelFileError(f"{path}: malformed JSON at line {exc.lineno}: {exc.msg}") from exc
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
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LabelFileError(f"{where}: malformed JSON: {exc.msg}") from exc
        yield where, _field(item, "feature", where), _field(item, "label", where)


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
        raise LabelFileError(f"{where}: label {raw!r} is not a string")
    return raw.strip()
