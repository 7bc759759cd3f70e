"""`GET /` serves the playground from the package, its assets with their types and a policy that
lets the page reach only its own server; the page stays open when the API asks for a token."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.server.harness import ServerThread
from tests.server.http_api.conftest import base_url


def get(url: str) -> tuple[int, str, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            headers = answer.headers
            return (
                answer.status,
                headers["content-type"],
                headers["content-security-policy"],
                (answer.read().decode()),
            )
    except urllib.error.HTTPError as err:
        return err.code, err.headers["content-type"], "", err.read().decode()


def test_the_page_and_its_assets_are_served(http_server: ServerThread) -> None:
    status, kind, policy, body = get(base_url(http_server) + "/")
    assert (status, kind.split(";")[0]) == (200, "text/html")
    assert "default-src 'self'" in policy and 'data-testid="generate-button"' in body
    for name, expected in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, kind, _, body = get(f"{base_url(http_server)}/playground/{name}")
        assert (status, kind.split(";")[0]) == (200, expected) and body
    for name in ("missing.js", "page.py", "..%2Fpage.py", "__init__.py"):
        status, _, _, body = get(f"{base_url(http_server)}/playground/{name}")
        assert status == 404 and '"error"' in body


def test_the_page_is_open_and_the_api_is_not_when_tokens_are_set(
    model_folders: dict[str, Path],
) -> None:
    srv = ServerThread(model=model_folders["gemma2"], auth_tokens=["secret"])
    try:
        assert get(base_url(srv) + "/")[0] == 200
        assert get(base_url(srv) + "/playground/app.js")[0] == 200
        assert get(base_url(srv) + "/v1/steering/model")[0] == 401
    finally:
        srv.close()


@pytest.mark.parametrize("name", ["index.html", "app.js", "style.css"])
def test_the_page_ships_no_outside_address(name: str) -> None:
    from importlib import resources

    text = resources.files("steering_server.http_api.playground").joinpath(name).read_text()
    assert "http://" not in text and "https://" not in text and "//cdn" not in text
