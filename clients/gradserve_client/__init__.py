"""gradserve-client: thin Python clients for gradserve, no torch needed.

Four clients that mirror each other method for method, over one I/O-free core:

- ``Client`` / ``AsyncClient``: HTTP, Open Inference Protocol V2 REST (binary tensor
  extension by default, JSON with ``binary=False``); ``ops()`` reads GET /v1/ops.
- ``GrpcClient`` / ``AsyncGrpcClient``: V2 gRPC (``inference.GRPCInferenceService``).

Each has ``activation``, ``loss`` and ``init`` (one per op family), a generic
``infer``, ``ops``, ``model_metadata``, ``server_metadata``, ``live`` / ``ready`` /
``model_ready``, and is a (async) context manager. The gRPC clients also stream:
``stream()`` gives an ``InferStream`` / ``AsyncInferStream`` that carries many
concurrent calls over one ModelStreamInfer rpc, and ``infer_many`` runs a list of
calls over one. Answers are ``Outputs``: numpy arrays keyed by output name
(``.torch()`` gives torch tensors). Errors are the exceptions of
``gradserve_client.errors``; overload and unavailability are retried per
``RetryPolicy``.
"""

import warnings
from typing import Any

from gradserve_client._core import (
    ModelMetadata,
    OpInfo,
    Outputs,
    ParamValue,
    RetryPolicy,
    ServerMetadata,
    TensorLike,
    TensorMetadata,
)
from gradserve_client._grpc import AsyncGrpcClient, GrpcClient
from gradserve_client._http import AsyncClient, Client
from gradserve_client._stream import AsyncInferStream
from gradserve_client._stream_sync import InferStream
from gradserve_client._stream_wire import InferCall
from gradserve_client.errors import (
    ALIAS_WARNING,
    GradserveError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    ServerError,
    TimedOutError,
    TlsError,
    TooLargeError,
    UnauthenticatedError,
    UnavailableError,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncGrpcClient",
    "AsyncInferStream",
    "Client",
    "GradserveError",
    "GrpcClient",
    "InferCall",
    "InferStream",
    "InvalidInputError",
    "ModelMetadata",
    "NotFoundError",
    "OpInfo",
    "Outputs",
    "OverloadedError",
    "ParamValue",
    "RetryPolicy",
    "ServerError",
    "ServerMetadata",
    "TensorLike",
    "TensorMetadata",
    "TimedOutError",
    "TlsError",
    "TooLargeError",
    "UnauthenticatedError",
    "UnavailableError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """``GradservError``, the base's earlier name: a deprecated alias of ``GradserveError``."""
    if name == "GradservError":
        warnings.warn(ALIAS_WARNING, DeprecationWarning, stacklevel=2)
        return GradserveError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
