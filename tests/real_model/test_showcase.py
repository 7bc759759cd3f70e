"""`make demo`'s program, run as it is on the real Gemma 3 270M: a demo server of its own,
what the SAE reads, a search, unsteered vs steered text, SIGTERM, and the commands to try."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from steering.demo.gemma import DEMO_FEATURES, DemoAssets

pytestmark = pytest.mark.real_model


def test_the_demo_shows_steered_text_that_differs(demo: DemoAssets) -> None:
    env = {**os.environ, "STEERING_DEMO_DIR": str(demo.folder)}  # converted by the fixture
    result = subprocess.run(
        [sys.executable, "-m", "steering_server.showcase"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr  # 0: steered text differs, clean exit
    searched = out.split("(steering-client search sea):", 1)[1].split("\n\n", 1)[0]
    assert searched.strip() and all("sea" in line for line in searched.strip().splitlines())
    name, feature = next(iter(DEMO_FEATURES.items()))
    plain = out.split("unsteered:\n", 1)[1].split("\n", 1)[0].strip()
    marker = f"steered with {feature.sae}:{feature.feature}=set:{feature.value:g} ({name}"
    steered = out.split(marker, 1)[1].split("\n", 2)[1].strip()
    assert plain and steered and steered != plain
    assert "exit code 0" in out
    assert "steering-server --demo" in out.split("try it by hand", 1)[1]
