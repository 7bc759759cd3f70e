"""`make screenshots`: start `steering-server --demo`, walk the playground as a newcomer would
(search "sea", add the sea feature, generate both columns, sweep its strength, inspect a
sentence, contrast two sets) in the same headless Chromium as the browser tests, and write the
PNGs to docs/ (or argv[1])."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.chromium import start_browser

PROMPT = "My favourite way to spend a Sunday afternoon is"
SENTENCE = "The old sailors rowed their boat across the sea."
SEA = ["The waves broke on the shore.", "Ships sailed across the ocean.", "Fishermen at sea."]
CITY = ["Traffic filled the busy streets.", "The subway was crowded.", "Office towers rose."]


def start_demo(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    ready = folder / "ready.json"
    log = (folder / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "steering_server", "--demo", "--host", "127.0.0.1", "--port", "0",
         "--metrics-port", "0", "--http-port", "0", "--ready-file", str(ready)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while not ready.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit((folder / "server.log").read_text(errors="replace")[-2000:])
        time.sleep(0.2)
    return proc, int(json.loads(ready.read_text())["http_port"])


def by_id(driver: Any, testid: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def until(driver: Any, condition: Any, timeout: float = 300) -> None:
    WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda _: condition())


def snap(driver: Any, element: Any, path: Path) -> None:
    """An element's picture, scrolled to the top of the window first (a picture is clipped to
    the window)."""
    driver.execute_script("arguments[0].scrollIntoView(true)", element)
    element.screenshot(str(path))


def shoot(driver: Any, url: str, out: Path) -> None:
    driver.get(url + "/#max=40&temp=0&seed=1")
    until(driver, lambda: driver.find_elements(By.CSS_SELECTOR, '[data-testid="sae-info"]'))
    by_id(driver, "search-input").send_keys("sea" + Keys.ENTER)
    until(driver, lambda: any("demo:632" in r.text for r in driver.find_elements(
        By.CSS_SELECTOR, '[data-testid="search-result"]')))  # fmt: skip
    hit = next(
        r for r in driver.find_elements(By.CSS_SELECTOR, '[data-testid="search-result"]')
        if "demo:632" in r.text
    )  # fmt: skip
    hit.find_element(By.CSS_SELECTOR, '[data-testid="add-feature"]').click()
    by_id(driver, "prompt-input").send_keys(PROMPT)
    by_id(driver, "generate-button").click()
    until(driver, lambda: driver.find_elements(By.CSS_SELECTOR, '[data-testid="receipt"]'))
    until(driver, lambda: all(
        b.get_attribute("data-logprob") for b in driver.find_elements(
            By.CSS_SELECTOR, '[data-testid="concept-presence"]')))  # fmt: skip
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(out / "playground-steered.png"))

    # How strong? The sweep over the prompt and the three neutral prompts the page offers, at
    # the default strengths, with the page's max tokens.
    by_id(driver, "sweep-button").click()
    until(driver, lambda: driver.find_elements(By.CSS_SELECTOR, '[data-testid="sweep-chart"]'), 900)
    section = driver.find_element(By.CSS_SELECTOR, 'section[aria-labelledby="h-sweep"]')
    snap(driver, section, out / "playground-sweep.png")
    rec = by_id(driver, "sweep-recommendation")
    print("sweep:", rec.text)
    for point in driver.find_elements(By.CSS_SELECTOR, '[data-testid="sweep-point"]'):
        print(
            {
                k: point.get_attribute(f"data-{k}")
                for k in ("strength", "value", "concept", "logprob", "repetition")
            }
        )
    print(by_id(driver, "sweep-texts").text)

    by_id(driver, "inspect-input").send_keys(SENTENCE)
    driver.find_element(By.ID, "inspect-feature").send_keys("demo:632")
    by_id(driver, "inspect-button").click()
    output = driver.find_element(By.ID, "inspect-output")
    until(driver, lambda: output.find_elements(By.CSS_SELECTOR, '[data-testid="token"]'))
    tokens = output.find_elements(By.CSS_SELECTOR, '[data-testid="token"]')
    next(t for t in tokens if t.text.strip() == "sea").click()
    until(driver, lambda: driver.find_elements(By.CSS_SELECTOR, '[data-testid="token-feature"]'))
    section = driver.find_element(By.CSS_SELECTOR, 'section[aria-labelledby="h-inspect"]')
    snap(driver, section, out / "playground-inspect.png")

    by_id(driver, "contrast-a").send_keys("\n".join(SEA))
    by_id(driver, "contrast-b").send_keys("\n".join(CITY))
    by_id(driver, "contrast-button").click()
    until(driver, lambda: driver.find_elements(By.CSS_SELECTOR, '[data-testid="contrast-result"]'))
    section = driver.find_element(By.CSS_SELECTOR, 'section[aria-labelledby="h-contrast"]')
    snap(driver, section, out / "playground-contrast.png")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        proc, port = start_demo(Path(scratch))
        driver = start_browser(1280, 1000)
        try:
            shoot(driver, f"http://127.0.0.1:{port}", out)
        finally:
            driver.quit()
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    print(f"screenshots in {out}/: playground-steered.png, -sweep.png, -inspect.png, -contrast.png")


if __name__ == "__main__":
    main()
