"""Presets and the edit syntax: relative values (`set:1.5x`) parse, and presets resolve them
into absolute values once, through the typical maxima, when loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from steering.edits import EditMode, FeatureEdit
from steering.steer.presets import PresetFileError, load_presets, parse_edit


def test_a_value_ending_in_x_is_relative() -> None:
    assert parse_edit("demo:632=set:1.5x") == FeatureEdit(
        "demo", 632, EditMode.SET, 1.5, False, True
    )
    assert parse_edit("a:b:1=add:-2x@active") == FeatureEdit(
        "a:b", 1, EditMode.ADD, -2.0, only_when_active=True, relative=True
    )
    assert parse_edit("demo:632=set:490") == FeatureEdit("demo", 632, EditMode.SET, 490.0)
    for text in ("demo:1=scale:2x", "demo:1=set:x", "demo:1=set:infx", "demo:1=set:1.5xx"):
        with pytest.raises(ValueError):
            parse_edit(text)


def test_presets_resolve_relative_edits_once_loaded(tmp_path: Path) -> None:
    file = tmp_path / "presets.toml"
    file.write_text('[presets.calm]\nedits = ["s:4=set:1.5x", "s:5=add:2"]\n')
    maxima = {("s", 4): 6.0}
    presets = load_presets(file, {"s": 32}, {}, typical_max=lambda s, f: maxima.get((s, f), 0.0))
    assert presets["calm"].edits == (
        FeatureEdit("s", 4, EditMode.SET, 9.0),
        FeatureEdit("s", 5, EditMode.ADD, 2.0),
    )
    file.write_text('[presets.calm]\nedits = ["s:5=set:1.5x"]\n')
    with pytest.raises(PresetFileError, match=r"edits\[0\]\.relative.*no typical maximum"):
        load_presets(file, {"s": 32}, {}, typical_max=lambda s, f: maxima.get((s, f), 0.0))
