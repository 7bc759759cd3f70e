"""What `make demo` says while its server starts: the GGUF conversion (a minute or two) only on
the run that converts, not on every run."""

from __future__ import annotations

from pathlib import Path

import pytest

from steering.demo import gemma
from steering_server import showcase


def test_the_conversion_is_announced_only_when_it_will_happen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEERING_DEMO_DIR", str(tmp_path))
    monkeypatch.setattr(gemma, "_package", lambda: None)  # any converted model is current
    assert "converting Gemma 3 270M" in showcase._starting_line()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / gemma.MARKER).write_text("{}")
    line = showcase._starting_line()
    assert line.startswith("starting steering-server --demo")
    assert "convert" not in line
