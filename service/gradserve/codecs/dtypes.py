"""The dtype table: wire names (native and V2) <-> torch dtypes, defined once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gradserve.errors import InvalidInput


@dataclass(frozen=True)
class DType:
    name: str  # native REST name ("float32")
    v2: str  # Open Inference Protocol datatype ("FP32")
    torch: torch.dtype
    itemsize: int
    numpy: np.dtype | None  # None: numpy has no such dtype (bfloat16)


DTYPES: tuple[DType, ...] = (
    DType("float32", "FP32", torch.float32, 4, np.dtype("<f4")),
    DType("float64", "FP64", torch.float64, 8, np.dtype("<f8")),
    DType("float16", "FP16", torch.float16, 2, np.dtype("<f2")),
    DType("bfloat16", "BF16", torch.bfloat16, 2, None),
    DType("int64", "INT64", torch.int64, 8, np.dtype("<i8")),
    DType("int32", "INT32", torch.int32, 4, np.dtype("<i4")),
)
BY_NAME = {d.name: d for d in DTYPES}
BY_V2 = {d.v2: d for d in DTYPES}
BY_TORCH = {d.torch: d for d in DTYPES}
FLOAT_NAMES = ("float32", "float64", "float16", "bfloat16")


def by_name(name: object, where: str) -> DType:
    """Look up a native dtype name; ``where`` names the input for the error."""
    if isinstance(name, str) and name in BY_NAME:
        return BY_NAME[name]
    raise InvalidInput(
        f"{where}: unknown dtype {name!r}; expected one of {', '.join(BY_NAME)}", code="unknown_dtype"
    )


def by_v2(name: object, where: str) -> DType:
    if isinstance(name, str) and name in BY_V2:
        return BY_V2[name]
    raise InvalidInput(
        f"{where}: unsupported datatype {name!r}; expected one of {', '.join(BY_V2)}",
        code="unknown_dtype",
    )


def of_tensor(t: torch.Tensor) -> DType:
    return BY_TORCH[t.dtype]
