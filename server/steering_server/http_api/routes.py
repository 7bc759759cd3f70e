"""The FastAPI application: OpenAI-compatible completions, the steering JSON routes, health.

Each route converts its body (`convert`), calls the front end, and converts the answer back;
errors leave as OpenAI's envelope (`errors`). A streamed completion waits for its first chunk
before answering, so an error the front end finds up front is still a status code; later ones
are one `data: {"error": ...}` event. A client that leaves aborts its request's row.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from steering.errors import EngineClosedError, SteeringError
from steering.frontend import FrontEnd, TextChunk, TokenLogprobs, score, sweep
from steering.requests import FeatureCardRequest, FinishReason, SearchBy, TextRequest
from steering_server.http_api import convert
from steering_server.http_api import schemas as s
from steering_server.http_api.calls import GenerateCall, discovery_call
from steering_server.http_api.errors import ProblemError, envelope, problem_of
from steering_server.http_api.page import PAGE_ROUTES, add_page_routes
from steering_server.metrics import Metrics
from steering_server.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
GENERATE_ROUTES = (COMPLETIONS, CHAT)
OPEN_ROUTES = ("/health", *PAGE_ROUTES)  # answered without a token: probes, the static page
OPENAI_FINISH = {FinishReason.LENGTH: "length"}  # every other reason is OpenAI's "stop"
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": s.ErrorEnvelope} for code in (400, 401, 404, 429, 503)
}


@dataclass
class EdgeState:
    """What the routes read: the front end once loaded, and whether the process drains."""

    settings: Settings
    metrics: Metrics
    frontend: FrontEnd | None = None
    draining: bool = False
    routes: list[Any] = field(default_factory=list)

    def loaded(self) -> FrontEnd:
        if self.frontend is None:
            raise EngineClosedError("the model is still loading")
        if self.frontend.closed or self.draining:
            raise EngineClosedError("the server is shutting down and takes no new calls")
        return self.frontend


@contextmanager
def problems(*, chat: bool | None = None) -> Iterator[None]:
    """Domain errors as HTTP answers; `chat`: an OpenAI route (its fields are named as OpenAI
    names them; None: a steering route, named as the proto names them)."""
    try:
        yield
    except SteeringError as exc:
        param = getattr(exc, "field", None)
        if param is not None and chat is not None:
            param = convert.openai_param(param, chat=chat)
        raise problem_of(exc, param) from exc


def _json(problem: ProblemError) -> JSONResponse:
    return JSONResponse(envelope(problem), status_code=problem.status)


def build_app(state: EdgeState) -> FastAPI:
    app = FastAPI(
        title="steering-server",
        summary="OpenAI-compatible completions with SAE steering in the body, and the "
        "steering JSON routes",
        docs_url=None,  # FastAPI's docs pages load scripts from a CDN: nothing is fetched
        redoc_url=None,
    )
    _handlers(app, state)
    _openai_routes(app, state)
    _steering_routes(app, state)
    add_page_routes(app)
    _dose_routes(app, state)
    state.routes = app.router.routes
    app.add_middleware(EdgeMiddleware, state=state)
    return app


def _handlers(app: FastAPI, state: EdgeState) -> None:
    @app.exception_handler(ProblemError)
    async def on_problem(request: Request, exc: ProblemError) -> JSONResponse:
        return _json(exc)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = exc.errors()[0]
        param = convert.body_param(error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            param, message = None, "the body is not valid JSON"
        if request.url.path in GENERATE_ROUTES:
            GenerateCall(state.metrics, uuid.uuid4().hex, request.url.path).end("invalid_argument")
        text = f"{param}: {message}" if param else message
        return _json(ProblemError(400, text, code="invalid_value", param=param))

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's own: a body it could not parse (too deep)
            if request.url.path in GENERATE_ROUTES:
                call = GenerateCall(state.metrics, uuid.uuid4().hex, request.url.path)
                call.end("invalid_argument")
            problem = ProblemError(400, "the body is not valid JSON", code="invalid_value")
            return _json(problem)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _json(ProblemError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(Exception)
    async def on_other(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error in %s", request.url.path, exc_info=exc)
        return _json(ProblemError(500, "internal error", "server_error", "internal_error"))


def _openai_routes(app: FastAPI, state: EdgeState) -> None:
    @app.get("/v1/models", response_model=s.ModelList, responses=ERRORS)
    async def models() -> s.ModelList:
        with problems(chat=False):
            return s.ModelList(data=[s.ModelCard(id=state.loaded().name)])

    @app.get("/v1/models/{model:path}", response_model=s.ModelCard, responses=ERRORS)
    async def model(model: str) -> s.ModelCard:
        with problems(chat=False):
            name = state.loaded().name
        if model != name:
            raise _unknown_model(model)
        return s.ModelCard(id=name)

    @app.post(COMPLETIONS, response_model=s.Completion, responses=ERRORS)
    async def completions(body: s.CompletionRequest, request: Request) -> Any:
        """A text completion; `stream: true` answers server-sent events."""
        return await _complete(state, request, body, chat=False)

    @app.post(CHAT, response_model=s.ChatCompletion, responses=ERRORS)
    async def chat_completions(body: s.ChatRequest, request: Request) -> Any:
        """A chat completion; `stream: true` answers server-sent events."""
        return await _complete(state, request, body, chat=True)


def _steering_routes(app: FastAPI, state: EdgeState) -> None:
    @app.get("/health", response_model=s.HealthAnswer, responses={503: {"model": s.HealthAnswer}})
    async def health() -> JSONResponse:
        """200 once serving; 503 while loading or draining."""
        frontend = state.frontend
        if frontend is None:
            status = "loading"
        elif frontend.closed or state.draining:
            status = "draining"
        else:
            status = "serving"
        return JSONResponse({"status": status}, status_code=200 if status == "serving" else 503)

    @app.get("/v1/steering/model", response_model=s.DescribeAnswer, responses=ERRORS)
    async def describe() -> s.DescribeAnswer:
        """The model, its SAEs, the limits in force and the presets (DescribeModel)."""
        with problems():
            return convert.describe_answer(state.loaded().describe())

    @app.post("/v1/steering/inspect", response_model=s.InspectAnswer, responses=ERRORS)
    async def inspect(body: s.InspectBody, request: Request) -> s.InspectAnswer:
        """Every input token with its top features and the named ones (Inspect)."""

        async def work(request_id: str) -> tuple[s.InspectAnswer, int]:
            frontend = state.loaded()
            tokens = await frontend.inspect(convert.inspect_request(body, request_id))
            state.metrics.inspected_tokens.inc(len(tokens))
            return convert.inspect_answer(tokens), len(tokens)

        return await _discovery(state, request, "Inspect", work)

    @app.post("/v1/steering/search", response_model=s.SearchAnswer, responses=ERRORS)
    async def search(body: s.SearchBody, request: Request) -> s.SearchAnswer:
        """Labelled features matching a query, best first (SearchFeatures)."""

        async def work(request_id: str) -> tuple[s.SearchAnswer, int]:
            frontend = state.loaded()
            matches = await frontend.search(
                body.query, sae=body.sae, limit=body.limit, by=SearchBy(body.by)
            )
            return convert.search_answer(matches), 0

        return await _discovery(state, request, "SearchFeatures", work)

    @app.post("/v1/steering/contrast", response_model=s.ContrastAnswer, responses=ERRORS)
    async def contrast(body: s.ContrastBody, request: Request) -> s.ContrastAnswer:
        """The features that most separate two sets of texts (Contrast)."""

        async def work(request_id: str) -> tuple[s.ContrastAnswer, int]:
            toward = await state.loaded().contrast(convert.contrast_request(body))
            return convert.contrast_answer(*toward), 0

        return await _discovery(state, request, "Contrast", work)

    @app.get(
        "/v1/steering/features/{sae}/{index}", response_model=s.FeatureCardBody, responses=ERRORS
    )
    async def feature_card(
        sae: str, index: int, request: Request, top_tokens: int = 0
    ) -> s.FeatureCardBody:
        """A feature's card: label, typical maximum, frequency, top contexts, and the tokens its
        decoder direction promotes and suppresses (DescribeFeature); `top_tokens` 0 means 10."""

        async def work(request_id: str) -> tuple[s.FeatureCardBody, int]:
            card_request = FeatureCardRequest(sae, index, top_tokens)
            card = await state.loaded().describe_feature(card_request)
            return convert.feature_card_answer(card), 0

        return await _discovery(state, request, "DescribeFeature", work)


def _dose_routes(app: FastAPI, state: EdgeState) -> None:
    @app.post("/v1/steering/score", response_model=s.ScoreAnswer, responses=ERRORS)
    async def score_route(body: s.ScoreBody, request: Request) -> s.ScoreAnswer:
        """Per continuation token, its log-probability and the named features (Score)."""

        async def work(request_id: str) -> tuple[s.ScoreAnswer, int]:
            scored = await score(state.loaded(), convert.score_request(body, request_id))
            return convert.score_answer(scored), scored.prompt_tokens + len(scored.tokens)

        return await _discovery(state, request, "Score", work)

    @app.post("/v1/steering/sweep", response_model=s.SweepAnswer, responses=ERRORS)
    async def sweep_route(body: s.SweepBody, request: Request) -> s.SweepAnswer:
        """One feature's edit at several strengths on several prompts, each output scored
        unsteered, and the recommended strength (Sweep)."""

        async def work(request_id: str) -> tuple[s.SweepAnswer, int]:
            points = await sweep(state.loaded(), convert.sweep_request(body, request_id))
            return convert.sweep_answer(points), 0

        return await _discovery(state, request, "Sweep", work)


async def _discovery(
    state: EdgeState,
    request: Request,
    rpc: str,
    work: Callable[[str], Awaitable[tuple[T, int]]],
) -> T:
    request_id = uuid.uuid4().hex
    with problems():
        call = discovery_call(state.metrics, rpc, request_id, work(request_id))
        return await until_disconnect(request, call)


def _unknown_model(model: str) -> ProblemError:
    return ProblemError(
        404, f"the model {model!r} is not served (see /v1/models)", code="model_not_found",
        param="model",
    )  # fmt: skip


# ---- completions --------------------------------------------------------------------------


async def _complete(
    state: EdgeState, request: Request, body: s.CompletionRequest | s.ChatRequest, *, chat: bool
) -> Any:
    request_id = uuid.uuid4().hex
    call = GenerateCall(state.metrics, request_id, CHAT if chat else COMPLETIONS)
    try:
        with problems(chat=chat):
            frontend = state.loaded()
            if body.model != frontend.name:
                raise _unknown_model(body.model)
            if isinstance(body, s.ChatRequest):
                text_request = convert.chat_request(body, request_id)
            else:
                text_request = convert.completion_request(body, request_id)
    except ProblemError as exc:
        call.end(_outcome(exc))
        raise
    answer = Answer(frontend, text_request, chat=chat, model=frontend.name, request_id=request_id)
    chunks = call.chunks(frontend, text_request)
    with problems(chat=chat):
        if not body.stream:
            return JSONResponse(await until_disconnect(request, answer.whole(chunks)))
        first = await until_disconnect(request, _first(chunks))
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    events = answer.events(first, chunks, include_usage=include_usage)
    return StreamingResponse(events, media_type="text/event-stream")


def _outcome(exc: ProblemError) -> str:
    from steering_server.http_api.errors import outcome_of

    return outcome_of(exc.status)


async def _first(chunks: AsyncIterator[TextChunk]) -> TextChunk | None:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelled if the client disconnects first (its row is then aborted)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    finally:
        watcher.cancel()


class Answer:
    """A completion's answer in OpenAI's shapes: whole, or as server-sent events."""

    def __init__(
        self, frontend: FrontEnd, request: TextRequest, *, chat: bool, model: str, request_id: str
    ) -> None:
        self.frontend = frontend
        self.chat = chat
        self.model = model
        self.id = ("chatcmpl-" if chat else "cmpl-") + request_id
        self.created = int(time.time())
        self.steered = bool(request.edits or request.preset or request.rules or request.watch)
        self.logprobs = request.sampling.top_logprobs is not None
        self.text_offset = 0  # where the next token's text starts in the completion (legacy)

    def _chat_logprobs(self, tokens: Sequence[TokenLogprobs]) -> s.ChatLogprobs | None:
        return convert.chat_logprobs(tokens) if self.logprobs else None

    def _completion_logprobs(self, tokens: Sequence[TokenLogprobs]) -> s.CompletionLogprobs | None:
        if not self.logprobs:
            return None
        answer = convert.completion_logprobs(tokens, self.text_offset)
        self.text_offset += sum(len(t.text) for t in tokens)
        return answer

    def _watched(self, chunk: TextChunk) -> list[s.WatchedBody]:
        if not chunk.watched:
            return []
        texts = self.frontend.token_texts(chunk.token_ids[: len(chunk.watched)])
        return [
            s.WatchedBody(token=text, token_id=token, activations=list(values))
            for text, token, values in zip(texts, chunk.token_ids, chunk.watched, strict=False)
        ]

    def _steering(self, chunk: TextChunk, watched: list[s.WatchedBody]) -> s.SteeringAnswer | None:
        if not self.steered:
            return None
        last = chunk.finish_reason is not None
        return s.SteeringAnswer(
            finish_reason=chunk.finish_reason.value if chunk.finish_reason else None,  # type: ignore[arg-type]
            receipts=convert.receipts(chunk.receipts) if last else [],
            watched=watched,
        )

    @staticmethod
    def _usage(chunk: TextChunk) -> s.Usage:
        return s.Usage(
            prompt_tokens=chunk.prompt_tokens,
            completion_tokens=chunk.completion_tokens,
            total_tokens=chunk.prompt_tokens + chunk.completion_tokens,
        )

    @staticmethod
    def _finish(chunk: TextChunk) -> Any:
        if chunk.finish_reason is None:
            return None
        return OPENAI_FINISH.get(chunk.finish_reason, "stop")

    async def whole(self, chunks: AsyncIterator[TextChunk]) -> dict[str, Any]:
        text, watched, last = [], [], None
        scored: list[TokenLogprobs] = []
        async with aclosing(chunks):  # type: ignore[type-var]
            async for chunk in chunks:
                text.append(chunk.text)
                watched += self._watched(chunk)
                scored += chunk.logprobs
                last = chunk
        assert last is not None  # the front end ends every request with a finished chunk
        usage, steering = self._usage(last), self._steering(last, watched)
        finish = self._finish(last)
        answer: s.ChatCompletion | s.Completion
        if self.chat:
            message = s.ChatMessageOut(content="".join(text))
            logprobs = self._chat_logprobs(scored)
            choice = s.ChatChoice(message=message, finish_reason=finish, logprobs=logprobs)
            answer = s.ChatCompletion(
                id=self.id, created=self.created, model=self.model, choices=[choice],
                usage=usage, steering=steering,
            )  # fmt: skip
        else:
            choices = [
                s.CompletionChoice(
                    text="".join(text),
                    finish_reason=finish,
                    logprobs=self._completion_logprobs(scored),
                )
            ]
            answer = s.Completion(
                id=self.id, created=self.created, model=self.model, choices=choices,
                usage=usage, steering=steering,
            )  # fmt: skip
        return _dump(answer)

    async def events(
        self, first: TextChunk | None, chunks: AsyncIterator[TextChunk], *, include_usage: bool
    ) -> AsyncIterator[str]:
        """`data: {chunk}` events, a usage chunk if asked for, then `data: [DONE]`; an error
        after the first event is one `data: {"error": ...}` event, then the end."""
        last = first
        try:
            async with aclosing(chunks):  # type: ignore[type-var]
                if self.chat:
                    yield _event(self._chunk(None, role=True, include_usage=include_usage))
                if first is not None:
                    yield _event(self._chunk(first, include_usage=include_usage))
                async for chunk in chunks:
                    last = chunk
                    yield _event(self._chunk(chunk, include_usage=include_usage))
        except SteeringError as exc:
            param = getattr(exc, "field", None)
            problem = problem_of(exc, param and convert.openai_param(param, chat=self.chat))
            yield f"data: {json.dumps(envelope(problem))}\n\n"
            return
        if include_usage and last is not None:
            usage: dict[str, Any] = {
                "id": self.id,
                "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self._usage(last).model_dump(),
            }
            yield _event(usage)
        yield "data: [DONE]\n\n"

    def _chunk(
        self, chunk: TextChunk | None, *, role: bool = False, include_usage: bool
    ) -> dict[str, Any]:
        ids: dict[str, Any] = {"id": self.id, "created": self.created, "model": self.model}
        body: s.ChatCompletionChunk | s.Completion
        if chunk is None:  # the chat's first event: the role, as OpenAI sends it
            delta = s.Delta(role="assistant", content="")
            body = s.ChatCompletionChunk(**ids, choices=[s.ChatChunkChoice(delta=delta)])
        else:
            finish, steering = self._finish(chunk), self._steering(chunk, self._watched(chunk))
            if self.chat:
                choice = s.ChatChunkChoice(
                    delta=s.Delta(content=chunk.text),
                    finish_reason=finish,
                    logprobs=self._chat_logprobs(chunk.logprobs),
                )
                body = s.ChatCompletionChunk(**ids, choices=[choice], steering=steering)
            else:
                logprobs = self._completion_logprobs(chunk.logprobs)
                choices = [
                    s.CompletionChoice(text=chunk.text, finish_reason=finish, logprobs=logprobs)
                ]
                body = s.Completion(**ids, choices=choices, steering=steering)
        dumped = _dump(body)
        if include_usage:
            dumped["usage"] = None
        return dumped


def _dump(body: Any) -> dict[str, Any]:
    """A body as JSON-ready data: `steering` and `usage` left out when not set."""
    dumped: dict[str, Any] = body.model_dump(mode="json")
    for key in ("steering", "usage"):
        if dumped.get(key) is None:
            dumped.pop(key, None)
    return dumped


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


# ---- auth, metrics, body size -------------------------------------------------------------


class EdgeMiddleware:
    """Around every HTTP call: the bearer token (health stays open), the body's size, and
    `steering_http_requests_total{route,status}` with the route's template as its label."""

    def __init__(self, app: ASGIApp, state: EdgeState) -> None:
        self.app = app
        self.state = state
        self.tokens = [t.encode() for t in state.settings.auth_tokens]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, status = route_template(self.state.routes, scope), 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            problem = self._refusal(scope, route)
            if problem is None and b"content-length" not in dict(scope.get("headers") or []):
                receive, problem = await self._counted(receive)
            if problem is None:
                await self.app(scope, receive, sending)
            else:
                await _json(problem)(scope, receive, sending)
        finally:
            self.state.metrics.on_http(route, status)

    def _too_large(self) -> ProblemError:
        limit = self.state.settings.max_message_bytes
        return ProblemError(
            413, f"the body is larger than max_message_bytes = {limit}", code="too_large"
        )

    async def _counted(self, receive: Receive) -> tuple[Receive, ProblemError | None]:
        """A body sent without its length (chunked): read as it arrives, counting its bytes,
        refused once past the limit; else replayed whole to the app."""
        limit, body, more = self.state.settings.max_message_bytes, bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left: the app will see it
                return receive, None
            body += message.get("body", b"")
            if len(body) > limit:
                return receive, self._too_large()
            more = message.get("more_body", False)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return replay, None

    def _refusal(self, scope: Scope, route: str) -> ProblemError | None:
        headers = dict(scope.get("headers") or [])
        if self.tokens and route not in OPEN_ROUTES and not self._allowed(headers):
            if route in GENERATE_ROUTES:
                GenerateCall(self.state.metrics, uuid.uuid4().hex, route).end("unauthenticated")
            return ProblemError(
                401, "missing or invalid bearer token", "authentication_error", "invalid_api_key"
            )
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.state.settings.max_message_bytes:
            return self._too_large()
        return None

    def _allowed(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        # Compare with every token, whatever matches, so timing says nothing about them.
        matches = [hmac.compare_digest(token, known) for known in self.tokens]
        return scheme.lower() == b"bearer" and any(matches)


def route_template(routes: Sequence[Any], scope: Scope) -> str:
    """The template of the route a call reaches (`/v1/models/{model:path}`), never a value of
    the call itself; "unmatched" for no route."""
    for route in routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return str(route.path)
    return "unmatched"
