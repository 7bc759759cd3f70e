"""The playground in the system Chromium (see `chromium`), against a real server on a tiny Gemma
with a labelled SAE and a preset. Without Chromium these tests skip, except in CI (`CI=true`),
where that fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from steering import save_sae
from steering.demo.toy import random_sae
from tests.browser.chromium import chromium, start_browser
from tests.server.harness import ServerThread

LABELS = {3: "ocean waves and ships", 7: "the sea", 9: "forest trees", 11: "sea shells"}
TYPICAL_MAX = {7: 6.5}
PRESETS = '[presets.calm]\ndescription = "test"\nedits = ["a:9=set:2"]\n'


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    ours = [item for item in items if here in Path(item.path).parents]
    if not ours or chromium() is not None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise pytest.UsageError(
            "tests/browser need Chromium and chromedriver (Debian: chromium chromium-driver)"
        )
    skip = pytest.mark.skip(reason="no chromium/chromedriver (Debian: chromium chromium-driver)")
    for item in ours:
        item.add_marker(skip)


@pytest.fixture(scope="module")
def page_server(
    model_folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("playground")
    a = save_sae(random_sae(64, 32, seed=5, threshold=0.02), root / "a", "gemma_scope_2")
    export = [
        {"index": i, "description": text}
        | ({"maxActApprox": TYPICAL_MAX[i]} if i in TYPICAL_MAX else {})
        for i, text in LABELS.items()
    ]
    (root / "a" / "explanations.json").write_text(json.dumps(export))
    presets = root / "presets.toml"
    presets.write_text(PRESETS)
    srv = ServerThread(model=model_folders["gemma2"], sae=[f"a={a}@1"], presets=presets)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = start_browser()
    yield driver
    driver.quit()
