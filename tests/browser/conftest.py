"""The playground in the system Chromium (Debian `chromium` + `chromium-driver`), headless, driven
by selenium, against a real server on a tiny Gemma with labelled SAEs and a preset.

Nothing is downloaded: the driver and the browser are named by path, and Selenium Manager runs
offline. Without Chromium these tests skip, except in CI (`CI=true`), where that fails.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from steering import save_sae
from steering.demo.toy import random_sae
from tests.server.harness import ServerThread

os.environ["SE_OFFLINE"] = "true"  # Selenium Manager: never fetch a driver or a browser

CHROMEDRIVER = os.environ.get("STEERING_CHROMEDRIVER", "/usr/bin/chromedriver")
BROWSERS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
LABELS = {3: "ocean waves and ships", 7: "the sea", 9: "forest trees", 11: "sea shells"}
TYPICAL_MAX = {7: 6.5}
PRESETS = '[presets.calm]\ndescription = "test"\nedits = ["a:9=set:2"]\n'


def chromium() -> tuple[str, str] | None:
    """(browser, driver) paths, or None where the system has none."""
    browser = next((b for b in BROWSERS if Path(b).exists()), None)
    driver = CHROMEDRIVER if Path(CHROMEDRIVER).exists() else shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    if chromium() is not None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise pytest.UsageError(
            "tests/browser need Chromium and chromedriver (Debian: chromium chromium-driver)"
        )
    skip = pytest.mark.skip(reason="no chromium/chromedriver (Debian: chromium chromium-driver)")
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(skip)


def start_browser(width: int = 1280, height: int = 800) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = chromium()
    assert found is not None
    browser, driver = found
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        f"--window-size={width},{height}",
        "--no-sandbox",  # root in containers and CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--metrics-recording-only",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


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
