"""Decode plans for repeated gRPC request headers: a client that sends the same op,
shapes, parameters and outputs call after call pays the header's decoding once.

Flow position: grpc/servicer.py -> codecs/v2_grpc.py (``parse_infer_request``,
``decode_wire``) -> **v2_grpc_plans** -> V2Request -> engine. A ModelInferRequest's
bytes, less its ``id`` and its ``raw_input_contents`` (which codecs/v2_grpc.py splits
off by hand), are its *header*. Requests with the same header bytes decode to the same
V2Request up to their id and tensor bytes, so the cache keeps, per header:

- the protobuf message parsed from it (``FromString`` once), and
- once a request with that header decoded successfully, a ``RequestPlan``: each
  input's name, datatype, shape and element count, the op and protocol parameters
  and the requested outputs, already checked.

A plan is only made for a request whose every input came in raw contents and that
names no shared memory (those read the region registry, whose state changes between
requests); its shape checks were made against one ``max_tensor_elements``, so it
serves only that limit. Every request still has its raw entries counted and sized
against the plan; one that does not match takes the full decoder, which raises the
same error as ever. Bounded: at most ``CAPACITY`` headers of at most
``MAX_HEADER_BYTES`` each (oldest dropped first); a longer header is never cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gradserve.codecs.dtypes import DType
from gradserve.codecs.v2_protocol import RequestedOutput, V2Request
from gradserve.codecs.v2_tensors import tensor_from_buffer, v2_dtype
from gradserve.grpc.generated import inference_pb2 as pb

# Distinct request shapes a server sees at once are few (ops x shapes in use); a client
# cycling through more only falls back to the full decoder.
CAPACITY = 256
# perf_analyzer's small request has a header of about 100 bytes.
MAX_HEADER_BYTES = 4096


@dataclass(frozen=True)
class InputPlan:
    name: str
    where: str
    dtype: DType
    shape: tuple[int, ...]
    count: int
    nbytes: int


@dataclass(frozen=True)
class RequestPlan:
    """A decoded header, ready to take one request's raw entries."""

    max_elements: int
    inputs: tuple[InputPlan, ...]
    params: dict[str, Any]
    outputs: tuple[RequestedOutput, ...] | None
    binary_output: bool
    timeout_s: float | None

    def build(self, raw: Sequence[bytes | memoryview], request_id: str) -> V2Request | None:
        """The request these raw entries make with this header; None when their count
        or a size does not fit (the full decoder then says what is wrong)."""
        if len(raw) != len(self.inputs):
            return None
        tensors: dict[str, torch.Tensor] = {}
        for item, data in zip(self.inputs, raw, strict=True):
            if len(data) != item.nbytes:
                return None
            tensors[item.name] = tensor_from_buffer(item.where, item.dtype, item.shape, item.count, data)
        return V2Request(
            tensors=tensors,
            params=dict(self.params),
            outputs=None if self.outputs is None else list(self.outputs),
            binary_output=self.binary_output,
            id=request_id or None,
            timeout_s=self.timeout_s,
        )


def plan_of(
    message: pb.ModelInferRequest, raw_count: int, req: V2Request, max_elements: int
) -> RequestPlan | None:
    """The plan of a request that ``decode_grpc_request`` decoded into ``req``; None
    when its decoding depended on more than the header (shared memory, typed contents)."""
    if raw_count != len(message.inputs) or req.shm_outputs:
        return None  # an input in shared memory takes no raw entry; outputs in one, a region
    inputs = []
    for item in message.inputs:
        where = f"input {item.name!r}"
        dtype = v2_dtype(item.datatype, where)
        shape = tuple(req.tensors[item.name].shape)
        count = req.tensors[item.name].numel()
        inputs.append(InputPlan(item.name, where, dtype, shape, count, count * dtype.itemsize))
    return RequestPlan(
        max_elements,
        tuple(inputs),
        dict(req.params),
        None if req.outputs is None else tuple(req.outputs),
        req.binary_output,
        req.timeout_s,
    )


class _Entry:
    __slots__ = ("message", "plan")

    def __init__(self, message: pb.ModelInferRequest) -> None:
        self.message = message
        self.plan: RequestPlan | None = None


class HeaderCache:
    """Header bytes -> parsed message and plan (see the module doc)."""

    def __init__(self, capacity: int = CAPACITY, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self.capacity = capacity
        self.max_header_bytes = max_header_bytes
        self._entries: dict[bytes, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def message(self, header: bytes) -> pb.ModelInferRequest:
        """The header's message (shared between requests: never mutated by its users).
        Raises protobuf's DecodeError, uncached, for bytes it refuses."""
        entry = self._entries.get(header)
        if entry is not None:
            return entry.message
        message = pb.ModelInferRequest.FromString(header)
        if len(header) <= self.max_header_bytes and self.capacity > 0:
            if len(self._entries) >= self.capacity:
                del self._entries[next(iter(self._entries))]  # oldest first
            self._entries[header] = _Entry(message)
        return message

    def plan(self, header: bytes, max_elements: int) -> RequestPlan | None:
        entry = self._entries.get(header)
        plan = None if entry is None else entry.plan
        return plan if plan is not None and plan.max_elements == max_elements else None

    def learn(self, header: bytes, plan: RequestPlan) -> None:
        entry = self._entries.get(header)
        if entry is not None:  # dropped since it was parsed: nothing to attach to
            entry.plan = plan


HEADERS = HeaderCache()
