"""`make demo`'s program, run as it is: a real demo server, unsteered vs steered, SIGTERM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from steering.demo import DEMO_FEATURES


def test_the_demo_shows_steered_text_that_differs(tmp_path: Path) -> None:
    env = {**os.environ, "STEERING_DEMO_DIR": str(tmp_path / "demo")}
    result = subprocess.run(
        [sys.executable, "-m", "steering_server.showcase"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = result.stdout
    assert result.returncode == 0, (
        out + result.stderr
    )  # 0 only if steered text differs and exit was clean
    plain = out.split("unsteered:\n", 1)[1].split("\n", 1)[0].strip()
    assert plain
    for name, feature in DEMO_FEATURES.items():
        marker = f"steered with {feature.sae}:{feature.feature}=set:{feature.value:g} ({name}"
        assert marker in out, out
        steered = out.split(marker, 1)[1].split("\n", 2)[1].strip()
        assert steered and steered != plain
    assert "exit code 0" in out
