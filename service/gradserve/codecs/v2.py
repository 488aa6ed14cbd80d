"""Open Inference Protocol (V2) codec: the request type and tensor checks both V2
transports share, and REST JSON + binary tensor data.

Flow position: transport (rest/v2.py; grpc/servicer.py via codecs/v2_grpc.py) ->
**codecs/v2** -> engine. A V2 request decodes into a ``V2Request`` (op, tensors, params,
requested outputs with their binary flags, id); ``engine_inputs`` turns it into what
``Engine.infer`` takes. Responses encode back from the engine's output tensors. Model
metadata and config live in codecs/v2_models.py.

The codec's parts live by role: codecs/v2_protocol.py (``V2Request``, the protocol's
request parameters, server constants), codecs/v2_tensors.py (datatypes, shapes, tensors
<-> bytes, shared-memory inputs and outputs), codecs/v2_rest.py (REST bodies) and
codecs/v2_grpc.py (gRPC messages). This module keeps ``engine_inputs``, which both
transports call.

Binary tensors (the HTTP binary extension and gRPC ``raw_*_contents`` share one byte
layout: little-endian, row-major, unpadded) are decoded with ``torch.frombuffer`` and a
reshape, never through Python lists. Every size is checked against the shape and
datatype before a byte is read, so a truncated body, a header length past the end or a
``binary_data_size`` that does not match is a 400, never a read past the buffer.

Shared memory (Triton's system shared-memory extension): a tensor whose parameters
name a ``shared_memory_region`` has no data in the request; the registry (shm.py)
checks its size, bounds and region and hands back a view, read like a binary section.
A requested output that names a region is written there (``write_shm_outputs``) and
answered without data (codecs/v2_tensors.py).

Status choices (API.md section 4): a request whose framing is wrong (bad JSON, sizes
that disagree, a string that is no V2 datatype, data whose element count does not match
its shape) is 400; a well-formed request that the op refuses (a V2 datatype gradserve
does not take such as BOOL, a bad value, wrong shapes for the op) is 422.
"""

from __future__ import annotations

from typing import Any

import torch

from gradserve.codecs.v2_protocol import V2Request
from gradserve.errors import InvalidInput
from gradserve.ops.registry import OpSpec


def engine_inputs(spec: OpSpec, req: V2Request) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and params for ``Engine.infer``.

    Init ops have no tensor inputs; V2 clients may still send the weight shape as an
    INT64 input named ``shape`` (API.md section 3), which becomes the ``shape`` param.
    """
    tensors, params = dict(req.tensors), dict(req.params)
    if "shape" in tensors and "shape" in spec.param_index and "shape" not in spec.input_index:
        t = tensors.pop("shape")
        if t.dtype not in (torch.int64, torch.int32) or t.dim() > 1:
            raise InvalidInput("input 'shape': expected a 1-D INT64 tensor of dimensions", code="bad_shape")
        if "shape" in params:
            raise InvalidInput(
                "shape is given both as an input and as a parameter; give one", code="bad_shape"
            )
        params["shape"] = [int(d) for d in t.reshape(-1).tolist()]
    return tensors, params
