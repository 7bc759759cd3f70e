"""The one exception the client raises for a failed call, carrying the gRPC status.

Every `grpc.RpcError` from the sync or async channel is re-raised as `SteeringClientError`
(the original stays as `__cause__`), so callers need not import grpc to handle failures.
"""

from __future__ import annotations

import grpc
import grpc.aio


class SteeringClientError(Exception):
    """A call failed with gRPC status `code` and the server's message `details`.

    Codes the server uses: INVALID_ARGUMENT (bad input; details name the field),
    RESOURCE_EXHAUSTED (queue full: retry later), UNAVAILABLE (server draining or unreachable),
    DEADLINE_EXCEEDED, UNAUTHENTICATED, INTERNAL.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    @property
    def code_name(self) -> str:
        """The status code's name, e.g. "INVALID_ARGUMENT"."""
        return self.code.name

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> SteeringClientError:
        if isinstance(error, grpc.Call | grpc.aio.AioRpcError):
            return cls(error.code(), error.details() or "")
        return cls(grpc.StatusCode.UNKNOWN, str(error))
