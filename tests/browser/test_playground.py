"""The playground's nine abilities (DESIGN, "The playground"), through its fixed `data-testid`
elements, in headless Chromium against a real server on a tiny Gemma: the model and its SAEs,
search and add, the strength slider, both columns streamed (the steered one equal to the same
request over the API), the heat map and receipts, inspect, contrast, copying the request, the
URL restoring the state, errors naming their field; no console errors, no request elsewhere."""

from __future__ import annotations

import argparse
import json
import shlex
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from selenium.common.exceptions import StaleElementReferenceException as StaleElement
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from steering_client.arguments import build_parser
from steering_client.cli import COMMANDS
from tests.browser.conftest import TYPICAL_MAX
from tests.server.harness import ServerThread

PROMPT = "The sea is"
REFUSED_CALLS = {"test_errors_name_the_field"}  # the browser logs the 400 these provoke


def origin(srv: ServerThread) -> str:
    return f"http://127.0.0.1:{srv.app.http_port}"


class Page:
    """The browser on the playground, found by test ids."""

    def __init__(self, driver: Any, url: str) -> None:
        self.driver = driver
        self.url = url

    def all(self, testid: str, within: Any = None) -> list[Any]:
        return (within or self.driver).find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]')

    def one(self, testid: str) -> Any:
        return self.driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')

    def wait(self, condition: Any, timeout: float = 30) -> Any:
        return WebDriverWait(
            self.driver, timeout, poll_frequency=0.05, ignored_exceptions=[StaleElement]
        ).until(lambda _: condition())

    def type(self, testid: str, text: str) -> None:
        box = self.one(testid)
        box.clear()
        box.send_keys(text)

    def open(self, fragment: str = "") -> None:
        self.driver.get(self.url + "/" + (f"#{fragment}" if fragment else ""))
        self.driver.refresh()  # a hash-only change does not reload
        self.wait(lambda: "connecting" not in self.driver.find_element(By.ID, "model-info").text)

    def slide(self, slider: Any, position: int) -> None:
        self.driver.execute_script(
            "arguments[0].value = arguments[1];"
            "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
            slider,
            position,
        )

    def error(self) -> str:
        box = self.one("error")
        return str(box.text) if box.is_displayed() else ""


@pytest.fixture(scope="module")
def page(browser: Any, page_server: ServerThread) -> Iterator[Page]:
    p = Page(browser, origin(page_server))
    p.open()
    yield p


@pytest.fixture(autouse=True)
def no_console_errors(page: Page, request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test: nothing SEVERE in the console (a test expecting a refused call may let
    the browser's own line about that response through) and no request left the server."""
    page.driver.get_log("browser")  # drop what came before
    yield
    allowed = request.node.name in REFUSED_CALLS
    severe = [
        e for e in page.driver.get_log("browser")
        if e["level"] == "SEVERE"
        and not (allowed and e.get("source") == "network" and "status of 400" in e["message"])
    ]  # fmt: skip
    assert severe == []
    names = page.driver.execute_script(
        "return performance.getEntries().map(e => e.name).filter(n => /^[a-z]+:/.test(n))"
    )
    assert names and all(n.startswith(page.url + "/") for n in names), names


def api(srv: ServerThread, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        origin(srv) + path, json.dumps(body).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return dict(json.loads(answer.read()))


def add_sea(page: Page) -> None:
    """Search "sea" and add feature a:7 (the one with a typical maximum)."""
    page.type("search-input", "sea" + Keys.ENTER)
    page.wait(lambda: any("a:7" in r.text for r in page.all("search-result")))
    hit = next(r for r in page.all("search-result") if "a:7" in r.text)
    hit.find_element(By.CSS_SELECTOR, '[data-testid="add-feature"]').click()
    page.wait(lambda: any("a:7" in r.text for r in page.all("edit-row")))


def test_model_saes_and_presets_are_shown(page: Page) -> None:
    info = page.driver.find_element(By.ID, "model-info").text
    assert "SAE a: layer 1, width 32, 4 labels" in info
    assert [p.text for p in page.all("preset")] == ["calm"]
    page.all("preset")[0].click()
    rows = page.all("edit-row")
    assert len(rows) == 1 and "a:9" in rows[0].text
    assert page.all("edit-strength", rows[0])[0].get_attribute("data-value") == "2"


def test_search_add_slide_mode_and_remove(page: Page) -> None:
    page.open()
    add_sea(page)
    hits = [r.text for r in page.all("search-result")]
    assert any("a:7" in h and "the sea" in h and "typical max 6.5" in h for h in hits), hits
    row = next(r for r in page.all("edit-row") if "a:7" in r.text)
    slider = page.all("edit-strength", row)[0]
    assert slider.get_attribute("type") == "range"
    assert float(slider.get_attribute("data-value")) == TYPICAL_MAX[7]  # 1x by default
    page.slide(slider, 1000)  # the top of the scale: 10 typical maxima
    assert float(slider.get_attribute("data-value")) == pytest.approx(10 * TYPICAL_MAX[7])
    readout = page.one("edit-readout").text
    assert "10× typical max (6.5) = 65" in readout  # both numbers shown
    page.slide(slider, 500)  # log-like: the middle is far below half of the top
    middle = float(slider.get_attribute("data-value"))
    assert 0 < middle < 2 * TYPICAL_MAX[7]
    slider.send_keys(Keys.ARROW_RIGHT)  # keyboard-usable
    assert float(slider.get_attribute("data-value")) > middle

    mode = page.one("edit-mode")
    mode.send_keys("add")
    page.wait(lambda: slider.get_attribute("min") == "-1000")
    page.slide(slider, -1000)
    assert float(slider.get_attribute("data-value")) == pytest.approx(-10 * TYPICAL_MAX[7])
    page.one("edit-active").click()
    assert "@active" in page.driver.current_url
    page.one("edit-remove").click()
    assert page.all("edit-row") == []


def generate(page: Page) -> None:
    page.one("generate-button").click()
    page.wait(lambda: page.one("generate-button").is_enabled() and page.all("receipt"))


def test_generate_streams_both_columns_like_the_api(page: Page, page_server: ServerThread) -> None:
    page.open("max=12&temp=0&seed=3")
    page.type("prompt-input", PROMPT)
    add_sea(page)
    row = page.all("edit-row")[0]
    page.slide(page.all("edit-strength", row)[0], 1000)
    value = float(page.all("edit-strength", row)[0].get_attribute("data-value"))
    generate(page)
    assert page.error() == ""

    unsteered, steered = page.one("output-unsteered").text, page.one("output-steered").text
    model = page_server.app.frontend.name  # type: ignore[union-attr]
    body = {"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "seed": 3}
    steered_body = body | {"steering": {"edits": [f"a:7=set:{value:g}"], "watch": ["a:7"]}}
    assert steered == api(page_server, "/v1/completions", steered_body)["choices"][0]["text"]
    assert unsteered == api(page_server, "/v1/completions", body)["choices"][0]["text"]
    assert steered != unsteered

    # The heat map: every steered token carries the watched feature's value, shown on hover.
    tokens = page.all("token", page.one("output-steered"))
    assert tokens and "".join(t.text for t in tokens) == steered
    values = [float(t.get_attribute("data-activation")) for t in tokens]
    assert all(v >= 0 for v in values)
    assert tokens[0].get_attribute("title").startswith("a:7 = ")
    receipts = [r.text for r in page.all("receipt")]
    assert len(receipts) == 1 and receipts[0].startswith(f"a:7=set:{value:g} applied at ")
    assert "read before the feature's own edit" in page.driver.page_source


def test_chat_turn(page: Page) -> None:
    page.open("max=4&temp=0&seed=1&chat=1&edit=a:3=add:0.5")
    page.type("prompt-input", "Hello")
    generate(page)
    assert page.error() == ""
    assert page.one("output-steered").text and page.one("output-unsteered").text


def test_inspect_colours_tokens_and_adds_their_features(page: Page) -> None:
    page.open()
    page.type("inspect-input", "ocean waves and the sea")
    page.one("inspect-button").click()
    output = page.driver.find_element(By.ID, "inspect-output")
    page.wait(lambda: page.all("token", output))
    tokens = page.all("token", output)
    assert "".join(t.text for t in tokens).strip() == "ocean waves and the sea"
    assert all(t.get_attribute("data-activation") is not None for t in tokens)
    tokens[-1].click()
    page.wait(lambda: page.all("token-feature"))
    first = page.all("token-feature")[0]
    feature = first.find_element(By.TAG_NAME, "code").text
    first.find_element(By.CSS_SELECTOR, '[data-testid="add-feature"]').click()
    assert any(feature in r.text for r in page.all("edit-row"))
    # Coloured by a chosen feature: the edit's, read at every token.
    page.driver.find_element(By.ID, "inspect-feature").send_keys(feature)
    page.one("inspect-button").click()
    page.wait(lambda: feature in page.all("token", output)[0].get_attribute("title"))


def test_contrast_lists_both_sides_with_add(page: Page) -> None:
    page.open()
    page.type("contrast-a", "the sea and the ships\nwaves on the ocean")
    page.type("contrast-b", "trees in the forest\na city at night")
    page.one("contrast-button").click()
    page.wait(lambda: page.all("contrast-result"))
    results = page.all("contrast-result")
    assert all(":" in r.find_element(By.TAG_NAME, "code").text for r in results)
    results[0].find_element(By.CSS_SELECTOR, '[data-testid="add-feature"]').click()
    assert len(page.all("edit-row")) == 1


def test_copies_and_the_url_restore_the_request(page: Page) -> None:
    page.open("max=6&temp=0&seed=4")
    page.type("prompt-input", "It's a test")
    add_sea(page)
    slider = page.all("edit-strength")[0]
    page.slide(slider, 800)
    value = slider.get_attribute("data-value")
    edit = f"a:7=set:{value}"

    page.one("copy-curl").click()
    curl = page.one("copy-text").text
    assert curl.startswith(f"curl -s {page.url}/v1/completions ")
    words = shlex.split(curl)
    sent = json.loads(words[words.index("-d") + 1])
    assert sent["steering"]["edits"] == [edit] and sent["prompt"] == "It's a test"
    assert sent["max_tokens"] == 6 and sent["seed"] == 4

    page.one("copy-python").click()
    python = page.one("copy-text").text
    compile(python, "copied.py", "exec")
    assert f'extra_body={{"steering": {{"edits": ["{edit}"]' in python

    page.one("copy-cli").click()
    cli = page.one("copy-text").text.splitlines()[-1]
    args = build_parser(COMMANDS).parse_args(shlex.split(cli)[1:])
    assert isinstance(args, argparse.Namespace) and args.command == "generate"
    assert args.text == "It's a test" and len(args.edit) == 1
    assert (args.edit[0].sae, args.edit[0].feature, args.edit[0].value) == ("a", 7, float(value))
    assert args.max_new_tokens == 6 and args.seed == 4 and args.temperature == 0

    page.driver.refresh()
    page.wait(lambda: page.all("edit-row"))
    assert page.one("prompt-input").get_attribute("value") == "It's a test"
    assert page.all("edit-strength")[0].get_attribute("data-value") == value
    assert "6.5" in page.one("edit-readout").text  # the typical maximum came back too
    assert page.driver.find_element(By.ID, "max-tokens").get_attribute("value") == "6"


def test_errors_name_the_field(page: Page) -> None:
    page.open("max=4&temp=0&edit=a:99999=set:1")
    page.type("prompt-input", PROMPT)
    page.one("generate-button").click()
    page.wait(lambda: page.error())
    assert "steering.edits[0].feature" in page.error()
    assert "99999" in page.error()


# ---- dose: search by meaning, feature cards, Sweep, concept presence -----------------------


def get(srv: ServerThread, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(origin(srv) + path, timeout=60) as answer:
        return dict(json.loads(answer.read()))


def test_search_by_meaning_marks_how_each_was_found(page: Page, page_server: ServerThread) -> None:
    page.open()
    Select(page.one("search-by")).select_by_value("activation")
    page.type("search-input", "waves on the ocean" + Keys.ENTER)
    page.wait(lambda: page.all("search-result"))
    hits = page.all("search-result")
    answer = api(
        page_server,
        "/v1/steering/search",
        {"query": "waves on the ocean", "limit": 12, "by": "activation"},
    )
    assert [h.find_element(By.TAG_NAME, "code").text for h in hits] == [
        f"{m['sae']}:{m['feature']}" for m in answer["matches"]
    ]
    assert {h.get_attribute("data-found-by") for h in hits} == {"activation"}
    assert {page.all("found-by", h)[0].text for h in hits} == {"meaning"}

    Select(page.one("search-by")).select_by_value("both")
    page.type("search-input", "sea" + Keys.ENTER)
    page.wait(lambda: page.all("search-result")[0].get_attribute("data-found-by") == "labels")
    found = [h.get_attribute("data-found-by") for h in page.all("search-result")]
    both = api(page_server, "/v1/steering/search", {"query": "sea", "limit": 12, "by": "both"})
    assert found == [m["found_by"] for m in both["matches"]]
    assert "activation" in found  # label hits first, then the model's reading


def test_feature_card_opens_from_an_id(page: Page, page_server: ServerThread) -> None:
    page.open()
    add_sea(page)
    hit = next(r for r in page.all("search-result") if "a:7" in r.text)
    page.all("feature-id", hit)[0].click()
    card = page.one("feature-card")
    page.wait(lambda: page.all("card-promoted", card))
    expected = get(page_server, "/v1/steering/features/a/7?top_tokens=10")
    assert page.one("card-label").text == expected["label"] == "the sea"
    assert "typical max 6.5" in card.text
    promoted = page.all("card-promoted", card)
    assert [int(t.get_attribute("data-token-id")) for t in promoted] == [
        t["token_id"] for t in expected["promoted"]
    ]
    assert [t.get_attribute("data-text") for t in promoted] == [
        t["text"] for t in expected["promoted"]
    ]
    suppressed = [int(t.get_attribute("data-token-id")) for t in page.all("card-suppressed", card)]
    assert suppressed == [t["token_id"] for t in expected["suppressed"]]
    page.driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    page.wait(lambda: not card.is_displayed())
    # The edit row's id opens the same card.
    page.all("feature-id", page.all("edit-row")[0])[0].click()
    page.wait(lambda: card.is_displayed() and page.all("card-promoted", card))
    assert card.get_attribute("data-feature") == "a:7"


def test_top_contexts_are_marked_as_text(page: Page) -> None:
    """A top context's [[token]] is highlighted, and the server's strings never become HTML."""
    page.open()
    # The page's own renderer, fed a hostile context through a stubbed fetch.
    page.driver.execute_script(
        """
        const real = window.fetch;
        window.fetch = async (url, init) => String(url).includes('/v1/steering/features/')
          ? new Response(JSON.stringify({sae: 'a', feature: 3, label: '<b>x</b>', typical_max: 0,
              frequency: 0.01, top_contexts: ['the <img src=x> [[sea]] was [[calm]]'],
              promoted: [], suppressed: []}), {headers: {'content-type': 'application/json'}})
          : real(url, init);
        """
    )
    page.type("search-input", "ocean" + Keys.ENTER)
    page.wait(lambda: any("a:3" in r.text for r in page.all("search-result")))
    hit = next(r for r in page.all("search-result") if "a:3" in r.text)
    page.all("feature-id", hit)[0].click()
    page.wait(lambda: page.all("card-context"))
    context = page.all("card-context")[0]
    assert context.text == "the <img src=x> sea was calm"
    assert [m.text for m in context.find_elements(By.TAG_NAME, "mark")] == ["sea", "calm"]
    assert context.find_elements(By.TAG_NAME, "img") == []
    assert page.one("card-label").text == "<b>x</b>"
    page.one("feature-card").find_element(By.ID, "card-close").click()


def test_sweep_draws_the_api_answer_and_uses_its_strength(
    page: Page, page_server: ServerThread
) -> None:
    page.open("max=3&temp=0&seed=1")
    page.type("prompt-input", PROMPT)
    page.type("search-input", "sea" + Keys.ENTER)
    page.wait(lambda: any("a:11" in r.text for r in page.all("search-result")))
    hit = next(r for r in page.all("search-result") if "a:11" in r.text)
    hit.find_element(By.CSS_SELECTOR, '[data-testid="add-feature"]').click()
    page.one("edit-mode").send_keys("add")
    page.type("sweep-prompts", "Once upon a time")
    page.type("sweep-strengths", "0, 1, 4")
    page.one("sweep-button").click()
    page.wait(lambda: page.all("sweep-point"), timeout=60)
    assert page.error() == ""
    body = {
        "feature": "a:11", "mode": "add", "prompts": [PROMPT, "Once upon a time"],
        "strengths": [0, 1, 4], "max_new_tokens": 3, "only_when_active": False,
    }  # fmt: skip
    expected = api(page_server, "/v1/steering/sweep", body)
    points = page.all("sweep-point")
    assert len(points) == 3 == len(expected["points"])
    for shown, want in zip(points, expected["points"], strict=True):
        assert float(shown.get_attribute("data-strength")) == want["strength"]
        assert float(shown.get_attribute("data-concept")) == want["concept"]
        assert float(shown.get_attribute("data-logprob")) == want["logprob"]
    assert page.one("sweep-chart").tag_name == "svg"
    # A point's texts, prompt by prompt.
    points[2].click()
    texts = page.one("sweep-texts").text
    assert all(t in texts for t in expected["points"][2]["texts"] if t.strip())

    rec = expected["recommendation"]
    shown_rec = page.one("sweep-recommendation")
    assert shown_rec.get_attribute("data-found") == str(rec["found"]).lower()
    assert rec["found"], rec  # on this SAE, a:11 added at 1 qualifies
    assert float(shown_rec.get_attribute("data-value")) == rec["value"]
    assert "recommended" in shown_rec.text
    slider = page.all("edit-strength")[0]
    page.slide(slider, 1000)
    page.one("sweep-use").click()
    page.wait(
        lambda: float(page.all("edit-strength")[0].get_attribute("data-value")) == rec["value"]
    )
    assert "a:11=add:1~" in page.driver.current_url


def test_concept_presence_is_the_unsteered_score(page: Page, page_server: ServerThread) -> None:
    page.open("max=6&temp=0&seed=2")
    page.type("prompt-input", PROMPT)
    add_sea(page)
    generate(page)
    assert page.error() == ""
    boxes = page.all("concept-presence")
    assert len(boxes) == 2
    outputs = [page.one("output-unsteered").text, page.one("output-steered").text]
    for box, text in zip(boxes, outputs, strict=True):
        page.wait(lambda b=box: b.get_attribute("data-logprob") is not None)
        body = {"prompt": PROMPT, "continuation": text, "features": ["a:7"]}
        score = api(page_server, "/v1/steering/score", body)
        assert float(box.get_attribute("data-activation")) == score["mean_activations"][0]
        assert float(box.get_attribute("data-logprob")) == score["mean_logprob"]
        assert box.text.startswith("concept presence (unsteered reading) of a:7: mean activation ")
    assert "read before the feature's own edit" in page.driver.page_source
