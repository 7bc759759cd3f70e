"""The gRPC edge: one `grpc.aio` server carrying SteeringService, health and reflection, behind
the auth and error interceptors. The process (`steering_server.app`) starts it before loading,
hands it the front end once warm, and drains it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from steering.frontend import FrontEnd
from steering_proto.v1 import steering_pb2 as pb
from steering_proto.v1 import steering_pb2_grpc as pb_grpc
from steering_server.grpc_api.interceptors import AuthInterceptor, ErrorInterceptor
from steering_server.grpc_api.reflection import enable_reflection
from steering_server.grpc_api.servicer import SteeringServicer
from steering_server.metrics import Metrics
from steering_server.preflight import StartupError
from steering_server.settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SteeringService"].full_name
GENERATE_METHOD = f"/{SERVICE_NAME}/Generate"


class GrpcEdge:
    """The gRPC server of one process: bound by `start`, SERVING after `serve`, then drained."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.health = health_aio.HealthServicer()
        self.servicer = SteeringServicer(metrics)
        self.errors = ErrorInterceptor(self._count_refused)
        self.server: aio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        """Bind the port and answer health NOT_SERVING until `serve`."""
        await self._set_health(serving=False)
        self.server = self._server()
        await self.server.start()
        s = self.settings
        log.info("gRPC listening on %s:%d (health NOT_SERVING while loading)", s.host, self.port)

    async def serve(self, frontend: FrontEnd) -> None:
        self.servicer.ready(frontend)
        await self._set_health(serving=True)

    async def begin_drain(self) -> None:
        """Health NOT_SERVING for every service (new calls are refused by the front end)."""
        await self.health.enter_graceful_shutdown()

    async def stop(self) -> None:
        await self.errors.end_streams()
        if self.server is not None:
            await self.server.stop(grace=1.0)

    async def _set_health(self, *, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else (health_pb2.HealthCheckResponse.NOT_SERVING)
        )
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    def _server(self) -> aio.Server:
        s = self.settings
        interceptors: list[aio.ServerInterceptor] = [self.errors]
        if s.auth_tokens:
            interceptors.insert(0, AuthInterceptor(s.auth_tokens, self._count_refused))
        options = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            # gRPC binds with SO_REUSEPORT by default: a second server on the same port would
            # bind too and take some of the connections. A port in use must refuse to start.
            ("grpc.so_reuseport", 0),
        ]
        server = aio.server(interceptors=interceptors, options=options)
        pb_grpc.add_SteeringServiceServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        enable_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server
        )
        address = f"{s.host}:{s.port}"
        credentials = _credentials(s)
        try:
            self.port = (
                server.add_secure_port(address, credentials)
                if credentials
                else server.add_insecure_port(address)
            )
        except RuntimeError as exc:  # grpc says only "Failed to bind to address ..."
            raise StartupError(f"--port: cannot bind {address} ({exc})") from None
        return server

    def _count_refused(self, method: str, code: grpc.StatusCode) -> None:
        """Generate calls refused before the servicer (bad token, undecodable) count too."""
        if method == GENERATE_METHOD:
            self.metrics.on_finished(code.name.lower(), 0.0)


def _credentials(s: Settings) -> grpc.ServerCredentials | None:
    if s.tls_cert is None or s.tls_key is None:  # both or neither: checked by preflight
        return None
    pair = [(Path(s.tls_key).read_bytes(), Path(s.tls_cert).read_bytes())]
    client_ca = Path(s.tls_client_ca).read_bytes() if s.tls_client_ca else None
    return grpc.ssl_server_credentials(
        pair, root_certificates=client_ca, require_client_auth=client_ca is not None
    )
