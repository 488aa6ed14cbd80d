"""The gRPC clients: ``GrpcClient`` and ``AsyncGrpcClient`` over inference.GRPCInferenceService.

Twins of the HTTP clients, method for method, over the same ``_core`` code: requests
go out as ``ModelInferRequest`` with ``raw_input_contents``; answers come back as the
same ``Outputs``; errors as the same exceptions.

Retries run in the client's loop, as over HTTP, not in the channel's configurable
retry policy (a gRPC service config), which does not serve here: it cannot tell a
queue-full RESOURCE_EXHAUSTED (retry) from a too-large one (never retry), since only the
message differs; it silently skips requests over its per-call retry buffer (256 KiB by
default, so most tensors); it caps attempts at 5; and with grpcio 1.85 its retry of a
refused connection sometimes waits out the whole deadline instead of failing fast.
What the channel does serve is kept: its transparent retries (an RPC that never left
the client) and its reconnect backoff. A call that ends CANCELLED without this client
cancelling it (grpcio does so under a burst of thousands of calls and while a server
drains) is retried like UNAVAILABLE; see ``_error_map.grpc_error``.

The V2 gRPC service has no catalog rpc, so ``ops()`` reads the HTTP catalog
(GET /v1/ops) at ``catalog_url``; everything else stays on gRPC.

Layout: ``_grpc_common.py`` (what both clients share), ``_grpc_sync.py``
(``GrpcClient``), ``_grpc_async.py`` (``AsyncGrpcClient``), ``_grpc_wire.py``
(ModelInfer framed by hand); re-exported here, where the package imports them from.
"""

from __future__ import annotations

from gradserve_client._grpc_async import AsyncGrpcClient as AsyncGrpcClient
from gradserve_client._grpc_common import DEFAULT_TARGET as DEFAULT_TARGET
from gradserve_client._grpc_common import DEFAULT_TIMEOUT_S as DEFAULT_TIMEOUT_S
from gradserve_client._grpc_common import _GrpcCommon as _GrpcCommon
from gradserve_client._grpc_sync import GrpcClient as GrpcClient
