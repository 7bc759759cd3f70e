"""The HTTP edge's server: uvicorn on its own port, bound by `start` (health 503 while the model
loads), serving after `serve`, drained with the process. The process's signal handlers stay the
process's: uvicorn installs none here.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from steering.frontend import FrontEnd
from steering_server.http_api.routes import EdgeState, build_app
from steering_server.metrics import Metrics
from steering_server.preflight import StartupError
from steering_server.settings import Settings

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # SIGTERM drains the whole process (steering_server.cli), not uvicorn alone


class HttpEdge:
    """The HTTP server of one process: bound by `start`, serving after `serve`, then drained."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.state = EdgeState(settings, metrics)
        self.app = build_app(self.state)
        self.port = 0
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        sock = _bind(s.host, s.http_port)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,  # one request line per call comes from steering_server.logs
            lifespan="off",
            timeout_graceful_shutdown=1,
            server_header=False,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()
        log.info("HTTP listening on http://%s:%d (health 503 while loading)", s.host, self.port)

    def serve(self, frontend: FrontEnd) -> None:
        self.state.frontend = frontend

    def begin_drain(self) -> None:
        """/health answers 503 and new calls are refused; calls in flight carry on."""
        self.state.draining = True

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await self._task


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, or a StartupError naming the flag."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise StartupError(f"--http-port: cannot bind {host}:{port} ({exc})") from None
    sock.setblocking(False)
    return sock
