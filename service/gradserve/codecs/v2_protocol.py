"""The V2 protocol's shared pieces: the transport-neutral request type, the protocol's
request parameters, and what the server says it is.

Flow position: the REST codec (codecs/v2_rest.py) and the gRPC codec (codecs/v2_grpc.py)
both decode into a ``V2Request`` (tensors, op params, requested outputs with their
binary flags and shared-memory slots, id, timeout); codecs/v2.py turns it into engine
arguments. codecs/v2_models.py advertises the server constants.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gradserve.errors import MalformedRequest
from gradserve.shm import OutputSlot

SERVER_NAME = "gradserve"
MODEL_VERSION = "1"
PLATFORM = "gradserve"
# Advertised in server metadata. Not "statistics": perf_analyzer would then poll a
# statistics endpoint we do not serve (research notes section 3.3).
EXTENSIONS = ("binary_tensor_data", "model_configuration", "parameters")

# Request parameters that belong to the protocol (Triton reserves them), never op params.
_RESERVED_PARAMS = frozenset(
    {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "headers"}
)
# Input/output parameters of Triton extensions gradserve does not implement: refused
# with a clear 400 rather than silently ignored (ignoring would read no data).
_UNSUPPORTED_TENSOR_PARAMS = frozenset({"classification"})


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool  # REST only: answer this output in the binary section
    # Written into this shared-memory region, not sent (checked at decode).
    shm: OutputSlot | None = None


@dataclass
class V2Request:
    """One decoded V2 request, transport-neutral."""

    tensors: dict[str, torch.Tensor]
    params: dict[str, Any]
    # None: the client named no outputs (the op's plain outputs are returned).
    outputs: list[RequestedOutput] | None
    binary_output: bool = False  # request-level binary_data_output
    id: str | None = None
    # From the `timeout` parameter (microseconds, Triton's queue timeout).
    timeout_s: float | None = None

    @property
    def output_names(self) -> list[str] | None:
        return None if self.outputs is None else [o.name for o in self.outputs]

    @property
    def shm_outputs(self) -> list[OutputSlot]:
        return [] if self.outputs is None else [o.shm for o in self.outputs if o.shm is not None]

    def binary_flags(self, names: Sequence[str]) -> dict[str, bool]:
        """Per answered output, whether it goes in the binary section."""
        if self.outputs is None:
            return {n: self.binary_output for n in names}
        return {o.name: o.binary for o in self.outputs}


def split_request_params(req: V2Request, params: Mapping[str, Any]) -> None:
    """Protocol parameters -> request fields; the rest are op params (unknown ones are
    ignored by the engine's lenient mode, as V2 clients add their own)."""
    for key, value in params.items():
        if key == "binary_data_output":
            req.binary_output = value is True or (isinstance(value, str) and value.lower() == "true")
        elif key == "timeout":
            # Triton's queue timeout in microseconds (transports cap it at our default).
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                req.timeout_s = float(value) / 1e6
        elif key in _RESERVED_PARAMS or key.startswith("triton_"):
            continue
        else:
            req.params[key] = value


def refuse_unsupported(params: Mapping[str, Any], where: str) -> None:
    bad = sorted(_UNSUPPORTED_TENSOR_PARAMS.intersection(params))
    if bad:
        raise MalformedRequest(
            f"{where}: parameter(s) {', '.join(bad)} (shared memory / classification) are not supported",
            code="unsupported_extension",
        )
