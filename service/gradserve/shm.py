"""Shared memory: the one registry of regions that both transports read tensors from
and write answers into (Triton's system and CUDA shared-memory extensions).

Flow position: transports (rest/shm.py, grpc/servicer.py) register, unregister and
list regions here; the V2 codecs (codecs/v2_tensors.py, codecs/v2_grpc.py) turn a tensor's
``shared_memory_region`` / ``shared_memory_byte_size`` / ``shared_memory_offset``
parameters into a ``ShmRef`` and ask this registry for the bytes: an input becomes a
view of the region (no copy, as a V2 binary body is viewed), an output is written into
the region once the engine answers. The runtime owns one ``SharedMemory``, so a region
registered over REST is usable over gRPC and the other way round, as in Triton.

Safety, in the order a request meets it:

- **Keys** name POSIX shared memory objects, as ``shm_open`` reads them: leading
  slashes dropped, no other slash, no ``..``. The object is opened under /dev/shm with
  ``O_NOFOLLOW`` and must be a regular file, so a symlink planted there cannot make the
  server map (and write into) some other file.
- **Bounds**: a region (offset + byte_size) must lie within its object when it is
  registered, and a tensor (its offset + byte_size) within its region on every
  request; sizes are checked against the tensor's shape and datatype before a byte is
  touched. A size that disagrees with the shape is a 422; an offset or size past the
  region is a 400; neither ever reaches outside the region.
- **A region that disappears**: the file descriptor stays open for the region's life,
  and ``os.fstat`` is checked before each use: an object that was unlinked (no links
  left) or truncated below the region is a 400 saying so. Touching a mapped page past
  the end of a truncated file is SIGBUS, which would kill the process; outputs are
  therefore written with ``os.pwrite`` (a write past the end only extends the file),
  and inputs, which are read as views of the mapping, are checked right before they
  are handed on. A client that truncates its own region while its request is being
  computed can still race that check: the window is the kernel's run time (see
  docs/architecture.md).
- **Unregistering** drops the name at once (new requests naming it are 404, the name
  can be registered again); requests already holding the region finish with it. The
  mapping and the descriptor are released when the last of them lets go (mmap refuses
  to unmap under a live view, so a tensor never outlives its memory).
"""

from __future__ import annotations

import base64
import contextlib
import mmap
import os
import stat
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from gradserve.config import Settings
from gradserve.errors import (
    InvalidInput,
    MalformedRequest,
    NotSupported,
    RegionExists,
    RegionNotFound,
    SharedMemoryError,
)

# Where glibc's shm_open finds POSIX shared memory objects on Linux.
SHM_DIR = "/dev/shm"
_NAME_MAX = 255  # bytes of one file name (NAME_MAX)
_MAX_REGION_NAME = 256
# The tensor parameters of the extension (inputs and requested outputs alike).
REGION_PARAM = "shared_memory_region"
SIZE_PARAM = "shared_memory_byte_size"
OFFSET_PARAM = "shared_memory_offset"
PARAMS = frozenset({REGION_PARAM, SIZE_PARAM, OFFSET_PARAM})


@dataclass(frozen=True)
class ShmRef:
    """Where one tensor lives: ``byte_size`` bytes at ``offset`` within a region."""

    region: str
    byte_size: int
    offset: int = 0


def _int_param(params: Mapping[str, Any], key: str, where: str) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedRequest(f"{where}: {key} must be a non-negative integer, got {value!r}"[:300])
    return value


def ref_from_params(params: Mapping[str, Any], where: str) -> ShmRef | None:
    """The ``ShmRef`` a tensor's parameters name, or None when they name no region.

    The byte size is required (Triton's clients always send it); the offset defaults
    to 0. Values arrive as Python scalars from either transport.
    """
    region = params.get(REGION_PARAM)
    if region is None:
        stray = sorted(PARAMS.intersection(params))
        if stray:
            raise MalformedRequest(f"{where}: {', '.join(stray)} given without {REGION_PARAM}")
        return None
    if not isinstance(region, str) or not region:
        raise MalformedRequest(f"{where}: {REGION_PARAM} must be a non-empty string")
    size = _int_param(params, SIZE_PARAM, where)
    if size is None:
        raise MalformedRequest(f"{where}: {REGION_PARAM} needs {SIZE_PARAM} (the tensor's bytes in it)")
    return ShmRef(region, size, _int_param(params, OFFSET_PARAM, where) or 0)


def _object_path(key: str) -> str:
    """The /dev/shm path of a POSIX shared memory key, checked as shm_open would."""
    name = key.lstrip("/")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate from JSON: no file has that name
        size = _NAME_MAX + 1
    if not name or "/" in name or name in (".", "..") or "\0" in name or size > _NAME_MAX:
        raise SharedMemoryError(
            f"shared memory key {key[:300]!r} is not a POSIX shared memory name "
            "(one name, optionally after a leading '/', at most 255 bytes)",
            code="bad_key",
        )
    return os.path.join(SHM_DIR, name)


def _close(fd: int, mapping: mmap.mmap) -> None:
    # Runs when the region object is collected. A tensor still viewing the mapping
    # keeps it alive (mmap refuses to close under exports), so only the fd may go.
    with contextlib.suppress(BufferError):
        mapping.close()
    os.close(fd)


class SystemRegion:
    """One registered region: ``byte_size`` bytes at ``offset`` in a POSIX shared
    memory object, kept open and mapped while registered or in use."""

    def __init__(
        self, name: str, key: str, offset: int, byte_size: int, write_through_mapping: bool = False
    ) -> None:
        self.name, self.key, self.offset, self.byte_size = name, key, offset, byte_size
        self.write_through_mapping = write_through_mapping
        path = _object_path(key)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SharedMemoryError(
                f"no shared memory object with key {key!r}: create it before registering it",
                code="bad_key",
            ) from None
        except OSError as exc:
            raise SharedMemoryError(
                f"cannot open shared memory object {key!r}: {exc.strerror}", code="bad_key"
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SharedMemoryError(f"{key!r} is not a shared memory object", code="bad_key")
            if offset + byte_size > info.st_size:
                raise SharedMemoryError(
                    f"region {name!r}: offset {offset} + byte_size {byte_size} is past the end of "
                    f"shared memory object {key!r} ({info.st_size} bytes)",
                    code="out_of_bounds",
                )
            # mmap's offset must be a multiple of the allocation granularity: map from
            # the page that holds the region's first byte.
            base = offset - offset % mmap.ALLOCATIONGRANULARITY
            self._skip = offset - base
            mapping = mmap.mmap(fd, self._skip + byte_size, mmap.MAP_SHARED, offset=base)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self._view = memoryview(mapping)
        self._finalizer = weakref.finalize(self, _close, fd, mapping)

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    def check_alive(self, where: str) -> None:
        """400 unless the object still has a name and still covers the region."""
        info = os.fstat(self.fd)
        if info.st_nlink == 0:
            raise SharedMemoryError(
                f"{where}: shared memory region {self.name!r} is gone: its object {self.key!r} was "
                "removed (unlinked); unregister the region and register a live one",
                code="region_gone",
            )
        if info.st_size < self.offset + self.byte_size:
            raise SharedMemoryError(
                f"{where}: shared memory region {self.name!r} is gone: its object {self.key!r} was "
                f"truncated to {info.st_size} bytes, below the region's end at {self.offset + self.byte_size}",
                code="region_gone",
            )

    def check_bounds(self, ref: ShmRef, where: str) -> None:
        if ref.offset > self.byte_size or ref.byte_size > self.byte_size - ref.offset:
            raise SharedMemoryError(
                f"{where}: shared_memory_offset {ref.offset} + shared_memory_byte_size {ref.byte_size} "
                f"is past the end of region {self.name!r} ({self.byte_size} bytes)",
                code="out_of_bounds",
            )

    def view(self, ref: ShmRef) -> memoryview:
        """The tensor's bytes as a writable view of the mapping (bounds checked first)."""
        start = self._skip + ref.offset
        return self._view[start : start + ref.byte_size]

    def aligned(self, ref: ShmRef, itemsize: int) -> bool:
        """Whether a tensor at ``ref`` starts on its item size (the mapping starts on a page)."""
        return (self.offset + ref.offset) % itemsize == 0

    def write(self, ref: ShmRef, data: memoryview) -> None:
        """``data`` into the object at the tensor's place. pwrite, not the mapping: a
        file truncated since the last check is then extended, not a SIGBUS; unless the
        server was told to trust its clients (``shared_memory_write_through_mapping``),
        then a plain copy through the mapping, about 3x faster."""
        if self.write_through_mapping:
            # memoryview assignment copies holding the GIL (pwrite releases it): 0.6 ms
            # for 16 MiB on the thread it runs on, against pwrite's 2.3 ms without it.
            start = self._skip + ref.offset
            self._view[start : start + data.nbytes] = data.cast("B") if data.format != "B" else data
            return
        position = self.offset + ref.offset
        while data.nbytes:
            written = os.pwrite(self.fd, data, position)
            data, position = data[written:], position + written


@dataclass
class OutputSlot:
    """Where one requested output goes: checked at decode, written after compute."""

    name: str
    region: SystemRegion
    ref: ShmRef


class SharedMemory:
    """The registry of shared-memory regions, shared by REST and gRPC (runtime.shm).

    Everything here runs on the event loop (registration, lookups, checks); only an
    output's write may run on a worker thread, on a region object it already holds.
    """

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.shared_memory_enabled
        self.max_regions = settings.shared_memory_max_regions
        self.write_through_mapping = settings.shared_memory_write_through_mapping
        self._regions: dict[str, SystemRegion] = {}

    @property
    def extensions(self) -> tuple[str, ...]:
        """Server-metadata extensions: the system one when on (CUDA shared memory is
        not offered: see ``register_cuda``)."""
        return ("system_shared_memory",) if self.enabled else ()

    def _check_enabled(self, what: str = "system shared memory") -> None:
        if not self.enabled:
            raise NotSupported(
                f"{what} is turned off on this server (setting shared_memory_enabled); "
                "send tensors in the request instead"
            )

    # ------------------------------------------------------------ register, unregister, status

    def register_system(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._check_enabled()
        if not name or len(name) > _MAX_REGION_NAME:
            raise MalformedRequest(f"a region name must have 1 to {_MAX_REGION_NAME} characters")
        if name in self._regions:
            raise RegionExists(f"shared memory region {name!r} is already registered; unregister it first")
        if len(self._regions) >= self.max_regions:
            raise SharedMemoryError(
                f"{len(self._regions)} shared memory regions are registered, this server's limit "
                "(setting shared_memory_max_regions); unregister some first",
                code="too_many_regions",
            )
        if byte_size <= 0:
            raise SharedMemoryError(f"region {name!r}: byte_size must be positive", code="out_of_bounds")
        self._regions[name] = SystemRegion(name, key, offset, byte_size, self.write_through_mapping)

    def unregister_system(self, name: str) -> None:
        """Drop one region, or every one for ``name == ""``; an unknown name is not an
        error (Triton's behaviour). Requests holding it finish with it."""
        self._check_enabled()
        if name:
            self._regions.pop(name, None)
        else:
            self._regions.clear()

    def system_status(self, name: str) -> list[dict[str, Any]]:
        """Every region (``name == ""``) or the one named (404 if none)."""
        self._check_enabled()
        if not name:
            return [region.status() for region in self._regions.values()]
        return [self._find(name, "status").status()]

    def register_cuda(self, name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        """CUDA shared memory (cudaIPC handles) is not offered yet: a clear 400 says why,
        whether or not this machine has CUDA."""
        self._check_enabled("CUDA shared memory")
        del name, raw_handle, byte_size
        if not torch.cuda.is_available():
            raise NotSupported(
                "CUDA shared memory is not supported on this device: this server has no CUDA; "
                "use system shared memory"
            )
        raise NotSupported(
            f"CUDA shared memory (cudaIPC handles, device {device_id}) is not supported by this server "
            "yet; use system shared memory"
        )

    def unregister_cuda(self, name: str) -> None:
        # No CUDA region can exist: unregistering one (or all) succeeds, as in Triton,
        # so clients that clean up both kinds at start (perf_analyzer) carry on.
        self._check_enabled("CUDA shared memory")

    def cuda_status(self, name: str) -> list[dict[str, Any]]:
        self._check_enabled("CUDA shared memory")
        if name:
            raise RegionNotFound(f"no CUDA shared memory region named {name[:300]!r} is registered")
        return []

    # ------------------------------------------------------------ tensors

    def _find(self, name: str, where: str) -> SystemRegion:
        region = self._regions.get(name)
        if region is None:
            raise RegionNotFound(f"{where}: no shared memory region named {name[:300]!r} is registered")
        return region

    def input_view(self, ref: ShmRef, where: str, expected: int, itemsize: int) -> tuple[memoryview, bool]:
        """An input's ``expected`` bytes as a view of its region, and whether they start
        on ``itemsize`` (so a tensor may alias them): the size, the bounds and the
        object's state are checked first."""
        self._check_enabled()
        region = self._find(ref.region, where)
        if ref.byte_size != expected:
            # The data's size disagrees with its shape: 422, as binary_data_size's does;
            # a reference outside the region is a 400 (check_bounds).
            raise InvalidInput(
                f"{where}: shared_memory_byte_size is {ref.byte_size} but its shape and datatype need "
                f"{expected} bytes",
                code="shape_mismatch",
            )
        region.check_bounds(ref, where)
        region.check_alive(where)
        return region.view(ref), region.aligned(ref, itemsize)

    def output_slot(self, name: str, ref: ShmRef) -> OutputSlot:
        """Where output ``name`` goes, checked before anything is computed."""
        where = f"output {name!r}"
        self._check_enabled()
        region = self._find(ref.region, where)
        region.check_bounds(ref, where)
        region.check_alive(where)
        return OutputSlot(name, region, ref)

    @staticmethod
    def write_output(slot: OutputSlot, data: memoryview) -> None:
        """An answered output's bytes into its region (its size checked against the slot)."""
        where = f"output {slot.name!r}"
        if data.nbytes > slot.ref.byte_size:
            raise SharedMemoryError(
                f"{where} has {data.nbytes} bytes but shared_memory_byte_size gives it "
                f"{slot.ref.byte_size}; give it a larger part of the region",
                code="output_too_small",
            )
        slot.region.check_alive(where)
        try:
            slot.region.write(slot.ref, data)
        except OSError as exc:  # ENOSPC on a full /dev/shm, EFBIG, ...
            raise SharedMemoryError(
                f"{where}: cannot write into shared memory region {slot.region.name!r}: {exc.strerror}",
                code="region_gone",
            ) from None


def decode_cuda_handle(value: Any) -> bytes:
    """REST's ``{"b64": "..."}`` form of a cudaIPC handle -> its bytes (400 if not)."""
    b64 = value.get("b64") if isinstance(value, dict) else None
    if not isinstance(b64, str):
        raise MalformedRequest('raw_handle must be an object {"b64": "<base64 cudaIPC handle>"}')
    try:
        return base64.b64decode(b64, validate=True)
    except ValueError:
        raise MalformedRequest("raw_handle.b64 is not valid base64") from None
