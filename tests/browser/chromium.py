"""The system Chromium (Debian `chromium` + `chromium-driver`) under selenium, headless, for the
playground's tests and screenshots. Nothing is downloaded: the driver and the browser are named
by path, and Selenium Manager is told to stay offline.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

os.environ["SE_OFFLINE"] = "true"  # Selenium Manager: never fetch a driver or a browser

CHROMEDRIVER = os.environ.get("STEERING_CHROMEDRIVER", "/usr/bin/chromedriver")
BROWSERS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def chromium() -> tuple[str, str] | None:
    """(browser, driver) paths, or None where the system has none."""
    browser = next((b for b in BROWSERS if Path(b).exists()), None)
    driver = CHROMEDRIVER if Path(CHROMEDRIVER).exists() else shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


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
