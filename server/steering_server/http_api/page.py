"""The playground: `GET /` serves one static page (HTML, an ES module, a style sheet) shipped in
this package's `playground/` folder. It knows nothing of steering: the page calls the same JSON
routes as curl. Open without a token (it holds no data); its API calls carry the token.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

from steering_server.http_api.errors import ProblemError

PAGE_ROUTES = ("/", "/playground/{name}")
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
# Only same-origin scripts, styles and calls: a page that fetched from elsewhere would fail here.
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {"content-security-policy": POLICY, "cache-control": "no-cache"}


def _read(name: str) -> bytes:
    return resources.files("steering_server.http_api.playground").joinpath(name).read_bytes()


def add_page_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(_read("index.html"), headers=HEADERS)

    @app.get("/playground/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        kind = TYPES.get(name[name.rfind(".") :]) if "." in name else None
        if kind is None or "/" in name or name.startswith("."):
            raise ProblemError(404, f"no file {name!r} in the playground", code="not_found")
        try:
            body = _read(name)
        except (FileNotFoundError, IsADirectoryError):
            raise ProblemError(
                404, f"no file {name!r} in the playground", code="not_found"
            ) from None
        return Response(body, media_type=kind, headers=HEADERS)
