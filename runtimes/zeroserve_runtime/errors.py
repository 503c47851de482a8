"""One error base carrying its HTTP status; REST and gRPC map it the same way everywhere."""

from __future__ import annotations

from typing import ClassVar


class ServingError(Exception):
    status_code = 500
    grpc_code = "INTERNAL"
    headers: ClassVar[dict[str, str]] = {}

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServingError):
    status_code = 400
    grpc_code = "INVALID_ARGUMENT"


class ModelNotFound(ServingError):
    status_code = 404
    grpc_code = "NOT_FOUND"


class PayloadTooLarge(ServingError):
    status_code = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class ServerBusy(ServingError):
    """Full: the caller should retry later (Knative's activator and tritonclient both understand 503)."""

    status_code = 503
    grpc_code = "UNAVAILABLE"
    headers: ClassVar[dict[str, str]] = {"Retry-After": "1"}


class ModelNotReady(ServingError):
    status_code = 503
    grpc_code = "UNAVAILABLE"
    headers: ClassVar[dict[str, str]] = {"Retry-After": "1"}


class RepositoryReadOnly(ServingError):
    """A load or unload: each server serves the one model it started with, so its repository is fixed."""

    status_code = 400
    grpc_code = "FAILED_PRECONDITION"


class ModelLoadError(ServingError):
    """The model cannot be fetched, verified or loaded: the server refuses to start."""
