"""V2 tensors <-> bytes: datatypes, shapes, the binary layout, and shared-memory regions.

Flow position: the REST and gRPC codecs (codecs/v2_rest.py, codecs/v2_grpc.py) check
each input's datatype and shape here and read its bytes (a binary section, a
``raw_input_contents`` entry or a shared-memory view) into a tensor; answers are
written back as bytes (``tensor_bytes``), or into the regions outputs name. The byte
layout, the size checks and the shared-memory rules are described in codecs/v2.py.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from gradserve.codecs.dtypes import BY_V2, DType
from gradserve.codecs.numbers import HARD_MAX_DIMS, check_shape_size
from gradserve.errors import InvalidInput, MalformedRequest, NotSupported
from gradserve.shm import OutputSlot, SharedMemory, ShmRef, ref_from_params

# The wire is little-endian; torch/numpy buffers are native-endian.
assert sys.byteorder == "little", "gradserve's V2 codec assumes a little-endian host"

# Every V2 datatype with its element size (None: variable, BYTES). Lets us tell "not a
# V2 datatype at all" (400, the framing is unreadable) from "a V2 datatype gradserve
# does not take" (422, BOOL/UINT8/...), and size a binary section of either.
V2_ITEMSIZE: dict[str, int | None] = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "BF16": 2,
    "FP32": 4,
    "FP64": 8,
    "BYTES": None,
}


def v2_dtype(datatype: object, where: str) -> DType:
    """V2 datatype string -> our dtype, or a 422 naming the input (API.md section 4:
    invalid dtypes are 422 on every transport, as in the native API)."""
    if not isinstance(datatype, str) or datatype not in V2_ITEMSIZE:
        # protobuf has no "missing": an unset datatype arrives as "" over gRPC.
        what = "has no datatype" if datatype == "" else f"unknown datatype {datatype!r}"
        raise InvalidInput(f"{where}: {what}; expected one of {', '.join(BY_V2)}", code="unknown_dtype")
    dtype = BY_V2.get(datatype)
    if dtype is None:
        raise InvalidInput(
            f"{where}: datatype {datatype} is not supported; expected one of {', '.join(BY_V2)}",
            code="bad_dtype",
        )
    return dtype


def check_shape(shape: object, where: str, max_elements: int) -> tuple[tuple[int, ...], int]:
    """A V2 shape (list of non-negative ints) and its element count, within the limits
    (numbers.check_shape_size: dims, elements, and elements spanned past zero dims)."""
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise InvalidInput(f"{where}: 'shape' must be a list of integers", code="bad_shape")
    if any(d < 0 for d in shape):
        raise InvalidInput(
            f"{where}: negative dimension in shape {list(shape)[:HARD_MAX_DIMS]}", code="bad_shape"
        )
    count = check_shape_size(where, list(shape), max_elements)
    return tuple(shape), count


def tensor_from_buffer(
    where: str,
    dtype: DType,
    shape: tuple[int, ...],
    count: int,
    buf: bytes | bytearray | memoryview,
    *,
    aligned: bool = False,
) -> torch.Tensor:
    """Raw little-endian row-major bytes -> tensor; the size was checked by the caller.

    A writable buffer that the caller knows is aligned for the dtype (a slice of a body
    that rest/body.py read into an aligned buffer) becomes the tensor's memory: no copy.
    Anything else (a protobuf ``bytes``, a misaligned slice) is copied once into a fresh
    ``bytearray``: torch must not alias memory it may not write, nor read a dtype
    misaligned.
    """
    if len(buf) != count * dtype.itemsize:  # callers check; this keeps the function safe alone
        raise MalformedRequest(
            f"{where}: {len(buf)} bytes of data, but shape {list(shape)} of {dtype.v2} needs "
            f"{count * dtype.itemsize}",
            code="size_mismatch",
        )
    if count == 0:
        return torch.empty(shape, dtype=dtype.torch)
    usable = isinstance(buf, bytearray) or (aligned and isinstance(buf, memoryview) and not buf.readonly)
    source = buf if usable else bytearray(buf)
    return torch.frombuffer(source, dtype=dtype.torch, count=count).reshape(shape)


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """A tensor's little-endian row-major bytes, as a view (no copy for a CPU tensor)."""
    if t.device.type != "cpu":
        t = t.cpu()
    if t.requires_grad:
        t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16; the bits are the same as int16's
        t = t.view(torch.int16)
    if t.numel() == 0:  # memoryview cannot cast a view with a zero in its shape
        return memoryview(b"")
    array = t.numpy()
    return (array if array.ndim else array.reshape(1)).data.cast("B")


def shm_input(
    shm: SharedMemory | None,
    ref: ShmRef,
    where: str,
    dtype: DType,
    shape: tuple[int, ...],
    count: int,
) -> torch.Tensor:
    """An input held in a shared-memory region: a view of the region once the registry
    has checked its size against shape and datatype, its bounds and the region."""
    if shm is None:
        raise NotSupported(f"{where}: shared memory is not offered on this transport")
    view, aligned = shm.input_view(ref, where, count * dtype.itemsize, dtype.itemsize)
    return tensor_from_buffer(where, dtype, shape, count, view, aligned=aligned)


def shm_output(shm: SharedMemory | None, name: str, params: Mapping[str, Any]) -> OutputSlot | None:
    """The region a requested output names in its parameters, checked; None if none."""
    ref = ref_from_params(params, f"output {name!r}")
    if ref is None:
        return None
    if shm is None:
        raise NotSupported(f"output {name!r}: shared memory is not offered on this transport")
    return shm.output_slot(name, ref)


def write_shm_outputs(slots: Sequence[OutputSlot], outputs: Mapping[str, torch.Tensor]) -> None:
    """Each answered output that names a region, written into it (sizes checked there).
    Blocking writes: transports run this off the event loop when it is large."""
    for slot in slots:
        t = outputs[slot.name]
        SharedMemory.write_output(slot, tensor_bytes(t))


def shm_bytes(slots: Sequence[OutputSlot], outputs: Mapping[str, torch.Tensor]) -> int:
    """How many bytes ``write_shm_outputs`` will write (to decide where it runs)."""
    return sum(outputs[s.name].numel() * outputs[s.name].element_size() for s in slots)
