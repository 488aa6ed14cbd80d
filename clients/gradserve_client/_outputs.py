"""Tensors out: an answer's raw bytes -> numpy arrays, gathered in ``Outputs``.

Flow position: a V2 answer (``_rest_codec.decode_http_infer``,
``_grpc_codec.decode_grpc_infer``) -> **decode_tensor** per output (``frombuffer``
over the raw little-endian bytes, no Python lists; BF16 widened to float32) ->
**Outputs**, what every client call returns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gradserve_client._tensors import V2_TO_NUMPY, bf16_to_float32
from gradserve_client.errors import ServerError


class Outputs(dict[str, NDArray[Any]]):
    """An op's answer: numpy arrays keyed by output name, in the server's order.

    ``datatypes`` keeps each output's V2 datatype: a BF16 output is a float32 array
    here (numpy has no bfloat16; the widening is exact) and ``torch()`` gives it back
    as ``torch.bfloat16``.
    """

    def __init__(
        self, items: Iterable[tuple[str, NDArray[Any]]] = (), datatypes: Mapping[str, str] | None = None
    ):
        super().__init__(items)
        self.datatypes: dict[str, str] = dict(datatypes or {})

    def torch(self) -> dict[str, Any]:
        """The same outputs as CPU torch tensors (needs torch installed)."""
        import torch

        result: dict[str, Any] = {}
        for name, array in self.items():
            tensor = torch.from_numpy(np.array(array, copy=True))
            result[name] = tensor.to(torch.bfloat16) if self.datatypes.get(name) == "BF16" else tensor
        return result


def decode_tensor(
    name: str, datatype: str, shape: Sequence[int], raw: bytes | bytearray | memoryview
) -> NDArray[Any]:
    """Raw little-endian row-major bytes -> a numpy array (frombuffer, no Python lists)."""
    dtype = V2_TO_NUMPY.get(datatype)
    if dtype is None:
        raise ServerError(f"output {name!r}: unsupported datatype {datatype!r}")
    count = math.prod(shape)
    if len(raw) != count * dtype.itemsize:
        raise ServerError(
            f"output {name!r}: {len(raw)} bytes do not hold {count} {datatype} elements of shape {list(shape)}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(tuple(shape))
    if datatype == "BF16":
        return bf16_to_float32(array)
    return array.astype(dtype.newbyteorder("="), copy=False)
