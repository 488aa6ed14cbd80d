"""POSIX shared memory objects made as a client makes them (shm_open + ftruncate +
mmap), for the shared-memory tests: no multiprocessing.shared_memory, whose resource
tracker would unlink objects behind the tests' back."""

from __future__ import annotations

import mmap
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gradserve.shm import SHM_DIR


class ShmObject:
    """One object under /dev/shm, mapped; ``key`` is its shm_open name."""

    def __init__(self, size: int) -> None:
        self.key = f"/gradserve-test-{uuid.uuid4().hex[:12]}"
        self.path = Path(SHM_DIR) / self.key[1:]
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(fd, size)
        self.map = mmap.mmap(fd, size)
        os.close(fd)

    def write(self, offset: int, data: bytes) -> None:
        self.map[offset : offset + len(data)] = data

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.map[offset : offset + size])

    def remove(self) -> None:
        self.map.close()
        self.path.unlink(missing_ok=True)


class ShmObjects:
    """Makes objects and removes them all at the end of a test."""

    def __init__(self) -> None:
        self.made: list[ShmObject] = []

    def __call__(self, size: int) -> ShmObject:
        obj = ShmObject(size)
        self.made.append(obj)
        return obj

    def remove_all(self) -> None:
        for obj in self.made:
            obj.remove()


@pytest.fixture
def shm_objects() -> Iterator[ShmObjects]:
    made = ShmObjects()
    yield made
    made.remove_all()
