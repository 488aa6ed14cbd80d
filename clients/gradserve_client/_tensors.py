"""Tensors in: user tensors and params -> ``WireTensor`` and ``InferRequest``.

Flow position: a client method (``activation``, ``loss``, ``init``, ``infer``) ->
**activation_inputs / loss_inputs / encode_inputs** (numpy, nested lists, scalars,
torch -> ``WireTensor``: V2 datatype, shape, little-endian row-major array) and
**encode_params** -> ``InferRequest`` -> ``_rest_codec`` or ``_grpc_codec`` /
``_grpc_wire`` bytes. Also home to the V2 datatype tables the decoders read.
I/O-free like all of ``_core``: nothing here opens a socket.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import NDArray

from gradserve_client.errors import InvalidInputError

#: Anything the clients accept as a tensor: a numpy array, a nested list or scalar,
#: or a torch tensor (torch is never imported unless such a tensor is passed).
TensorLike: TypeAlias = Any
#: A request parameter: a scalar, or a sequence of ints (``shape``), sent as "500,500".
ParamValue: TypeAlias = bool | int | float | str | Sequence[int] | None
#: A V2 parameter value as it travels on the wire.
Scalar: TypeAlias = bool | int | float | str

# V2 datatype <-> numpy dtype (little-endian). BF16 has no numpy dtype: its 2-byte
# patterns travel as uint16 and are widened to float32 on the way out (exactly).
V2_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),
}
# Keyed by (kind, itemsize) so that byte order does not matter; BF16 is left out
# (its uint16 carrier would shadow UINT16).
_NUMPY_TO_V2: dict[tuple[str, int], str] = {
    (dt.kind, dt.itemsize): name for name, dt in V2_TO_NUMPY.items() if name != "BF16"
}


def bf16_to_float32(bits: NDArray[Any]) -> NDArray[Any]:
    """bfloat16 bit patterns (uint16) -> float32 values: the upper half of a float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


# -- tensors in ----------------------------------------------------------------------


@dataclass(frozen=True)
class WireTensor:
    """One input tensor, ready for the wire: V2 datatype, shape and a little-endian,
    C-contiguous array (for BF16: the uint16 bit patterns)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: NDArray[Any]

    def raw(self) -> bytes:
        """The bytes of the binary extension and of gRPC ``raw_input_contents``."""
        return self.array.tobytes()

    def view(self) -> memoryview:
        """The same bytes without a copy (the array is C-contiguous), as unsigned bytes."""
        view: memoryview = self.array.reshape(-1).view(np.uint8).data
        return view

    def json_data(self) -> list[Any]:
        """A flat row-major list for a V2 JSON body."""
        # BF16 travels as its float32 value, which is exact; the server rounds it back.
        array = bf16_to_float32(self.array) if self.datatype == "BF16" else self.array
        flat: list[Any] = array.ravel().tolist()
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            flat = [_json_float(v) for v in flat]
        return flat


def _json_float(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _is_torch_tensor(value: object) -> bool:
    # Checked by module name so that torch is never imported by the client itself.
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def to_wire(name: str, value: TensorLike, *, float_input: bool = False) -> WireTensor:
    """Turn one user tensor into a ``WireTensor`` (InvalidInputError if it cannot be one).

    numpy arrays and torch tensors keep their dtype. Nested lists and scalars follow
    the native API's defaults: float32 for floats, int64 for integers, and float32
    for integers too when ``float_input`` (an activation's ``x``, a loss's ``input``).
    """
    if _is_torch_tensor(value):
        return _torch_to_wire(name, value)
    if isinstance(value, np.ndarray):
        array: NDArray[Any] = value
        if array.dtype.name == "bfloat16":  # ml_dtypes' bfloat16, if the caller uses it
            return _wire(name, "BF16", array.view(np.uint16))
    else:
        try:
            array = np.asarray(value)
        except ValueError as exc:
            raise InvalidInputError(f"input {name!r}: not a rectangular numeric tensor ({exc})") from None
        if array.dtype.kind == "f" or (float_input and array.dtype.kind in "iu"):
            array = array.astype(np.float32)
        elif array.dtype.kind in "iu":
            array = array.astype(np.int64)
    datatype = _NUMPY_TO_V2.get((array.dtype.kind, array.dtype.itemsize))
    if datatype is None:
        raise InvalidInputError(f"input {name!r}: dtype {array.dtype} has no V2 datatype")
    return _wire(name, datatype, array)


def _torch_to_wire(name: str, tensor: Any) -> WireTensor:
    torch: Any = sys.modules["torch"]  # imported already: the caller holds a tensor
    t = tensor.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return _wire(name, "BF16", t.view(torch.int16).numpy().view(np.uint16))
    return to_wire(name, t.numpy())


def _wire(name: str, datatype: str, array: NDArray[Any]) -> WireTensor:
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return WireTensor(name, datatype, tuple(int(d) for d in array.shape), np.ascontiguousarray(little))


def encode_inputs(
    inputs: Mapping[str, TensorLike] | None, float_inputs: Iterable[str] = ()
) -> list[WireTensor]:
    """All named inputs as ``WireTensor``; ``None`` values are left out (optional inputs)."""
    floats = set(float_inputs)
    return [
        to_wire(name, value, float_input=name in floats)
        for name, value in (inputs or {}).items()
        if value is not None
    ]


def encode_params(params: Mapping[str, ParamValue] | None) -> dict[str, Scalar]:
    """Params as V2 request parameters: ``None`` is left out (the server's default
    applies) and a sequence of ints (an init ``shape``) becomes ``"500,500"``."""
    encoded: dict[str, Scalar] = {}
    for name, value in (params or {}).items():
        if value is None:
            continue
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, bool | int | float | str):
            encoded[name] = value
        elif isinstance(value, Sequence) and all(isinstance(d, int | np.integer) for d in value):
            encoded[name] = ",".join(str(int(d)) for d in value)
        else:
            raise InvalidInputError(
                f"param {name!r}: expected a bool, number, string or sequence of ints, got {value!r}"
            )
    return encoded


# -- the families --------------------------------------------------------------------


def activation_inputs(x: TensorLike, inputs: Mapping[str, TensorLike] | None) -> list[WireTensor]:
    """An activation's tensors: ``x`` plus extra ones (prelu's ``alpha``, ``grad_y``...)."""
    return encode_inputs({"x": x, **(inputs or {})}, float_inputs=("x",))


def loss_inputs(
    input: TensorLike | None, target: TensorLike | None, inputs: Mapping[str, TensorLike] | None
) -> list[WireTensor]:
    """A loss's tensors. ``input``/``target`` may be None for ops that name theirs
    differently (regularization's ``weight``; full_loss's ``x`` and ``weight``)."""
    return encode_inputs({"input": input, "target": target, **(inputs or {})}, float_inputs=("input",))


@dataclass(frozen=True)
class InferRequest:
    """One V2 inference call, transport-neutral. ``outputs`` None: the op's plain outputs."""

    op: str
    inputs: list[WireTensor]
    params: dict[str, Scalar]
    outputs: tuple[str, ...] | None = None
