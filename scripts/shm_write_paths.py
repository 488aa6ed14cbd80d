"""Ways to write a 16 MiB answer into a POSIX shared-memory region, timed, and what each
does when the region's object is truncated under it.

gradserve writes shared-memory outputs with ``os.pwrite`` (shm.py): a write past the
end of a truncated object only extends it, where a store through the mapping would
raise SIGBUS and kill the server. This measures what that safety costs against a copy
through the mapping, and ``process_vm_writev`` on our own pid (which returns a short
count instead of SIGBUS for a page that is gone). The figures in docs/benchmarks.md
("Shared memory: the answer's write") come from it:

    .venv/bin/python scripts/shm_write_paths.py
"""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from collections.abc import Callable

SIZE = 16 << 20
NAME = f"/dev/shm/gradserve-write-paths-{os.getpid()}"


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def median_ms(fn: Callable[[], None], n: int = 30) -> float:
    fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[n // 2] * 1e3


def main() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    vm_writev = libc.process_vm_writev
    vm_writev.restype = ctypes.c_ssize_t
    vm_writev.argtypes = [
        ctypes.c_int, ctypes.POINTER(IoVec), ctypes.c_ulong, ctypes.POINTER(IoVec), ctypes.c_ulong, ctypes.c_ulong
    ]  # fmt: skip
    fd = os.open(NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, SIZE)
        region = mmap.mmap(fd, SIZE)
        answer = bytearray(os.urandom(1 << 20)) * (SIZE >> 20)
        src = ctypes.addressof((ctypes.c_char * SIZE).from_buffer(answer))
        dst = ctypes.addressof((ctypes.c_char * SIZE).from_buffer(region))

        def through_vm_writev() -> int:
            local, remote = IoVec(src, SIZE), IoVec(dst, SIZE)
            return int(vm_writev(os.getpid(), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0))

        def through_vm_writev_checked() -> None:
            if through_vm_writev() != SIZE:
                raise OSError(ctypes.get_errno(), "process_vm_writev wrote short")

        def through_pwrite() -> None:
            os.pwrite(fd, answer, 0)

        def through_mapping() -> None:
            region[:] = answer

        print("16 MiB answer into a region, median of 30 (ms):")
        print(f"  os.pwrite (gradserve)           {median_ms(through_pwrite):6.2f}")
        print(f"  process_vm_writev (own pid)     {median_ms(through_vm_writev_checked):6.2f}")
        print(f"  copy through the mapping        {median_ms(through_mapping):6.2f}")
        os.ftruncate(fd, SIZE // 2)
        written = through_vm_writev()
        print(f"object truncated to half: process_vm_writev wrote {written} bytes, no signal;")
        print("  a copy through the mapping would now raise SIGBUS (not run: it ends the process)")
        region.close()
    finally:
        os.close(fd)
        os.unlink(NAME)


if __name__ == "__main__":
    main()
