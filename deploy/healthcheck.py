"""Container HEALTHCHECK: exit 0 when grpc.health.v1 on the local gRPC port says SERVING.

Plaintext only: with TLS on, leave health to the orchestrator's probes.
"""

import os
import sys

# Runs in the image, next to the server: the core's ban on grpc does not apply here.
import grpc  # noqa: TID251
from grpc_health.v1 import health_pb2, health_pb2_grpc

port = os.environ.get("STEERING_PORT", "50051")
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=4
        )
    except grpc.RpcError as error:
        sys.exit(f"health check failed: {error.code().name}")
sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)
