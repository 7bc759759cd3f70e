"""Domain exceptions of the steering core.

The server maps these to gRPC status codes in one place; the core never knows about gRPC.
"""

from __future__ import annotations


class SteeringError(Exception):
    """Base class of every error the core raises on purpose."""


class SaeFormatError(SteeringError):
    """An SAE file is missing, unreadable, or holds parameters that are not a JumpReLU SAE."""


class InvalidRequestError(SteeringError):
    """A request is not acceptable; `field` names the offending field (e.g. `sampling.top_p`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidEditError(InvalidRequestError):
    """A requested feature edit is not acceptable."""


class QueueFullError(SteeringError):
    """The engine's waiting queue is full; the request was not admitted."""


class EngineClosedError(SteeringError):
    """The engine is shutting down and takes no new requests."""


class ModelError(SteeringError):
    """A model folder cannot be loaded or steered (unknown architecture, bad layer index)."""


class RequestFailedError(SteeringError):
    """The engine failed this request (its message is safe to show the caller)."""
