"""The shared-memory region registry (shm.py) on real POSIX shared memory objects:
keys, bounds, lying sizes and offsets, regions that disappear, outputs, unregistering
under a live view, the limits and the off switch."""

from __future__ import annotations

import gc
import os
import uuid
from pathlib import Path

import pytest
import torch

from gradserve.codecs import v2_tensors
from gradserve.codecs.dtypes import BY_V2
from gradserve.config import Settings
from gradserve.errors import (
    InvalidInput,
    MalformedRequest,
    NotSupported,
    RegionExists,
    RegionNotFound,
    SharedMemoryError,
)
from gradserve.shm import SHM_DIR, SharedMemory, ShmRef, ref_from_params
from tests.shm_objects import ShmObjects, shm_objects

__all__ = ["shm_objects"]  # the fixture, imported for pytest

FP32 = BY_V2["FP32"]


def registry(**settings: object) -> SharedMemory:
    return SharedMemory(Settings(**settings))  # type: ignore[arg-type]


def test_register_status_unregister(shm_objects: ShmObjects) -> None:
    shm = registry()
    obj = shm_objects(4096)
    shm.register_system("a", obj.key, 0, 4096)
    shm.register_system("b", obj.key, 1000, 100)  # two regions of one object
    assert shm.system_status("b") == [{"name": "b", "key": obj.key, "offset": 1000, "byte_size": 100}]
    assert {r["name"] for r in shm.system_status("")} == {"a", "b"}
    with pytest.raises(RegionExists):
        shm.register_system("a", obj.key, 0, 16)
    shm.unregister_system("a")
    shm.unregister_system("never-registered")  # Triton: not an error
    with pytest.raises(RegionNotFound):
        shm.system_status("a")
    shm.unregister_system("")
    assert shm.system_status("") == []
    assert shm.extensions == ("system_shared_memory",)


@pytest.mark.parametrize(
    ("key", "needle"),
    [
        ("", "not a POSIX shared memory name"),
        ("/", "not a POSIX shared memory name"),
        ("/a/b", "not a POSIX shared memory name"),
        ("..", "not a POSIX shared memory name"),
        ("/../etc/passwd", "not a POSIX shared memory name"),
        ("x\0y", "not a POSIX shared memory name"),
        ("/\ud800", "not a POSIX shared memory name"),
        ("/" + "k" * 300, "not a POSIX shared memory name"),
        ("/gradserve-no-such-object", "no shared memory object"),
    ],
)
def test_bad_keys_are_refused(key: str, needle: str) -> None:
    with pytest.raises(SharedMemoryError, match=needle):
        registry().register_system("r", key, 0, 16)


def test_a_symlink_in_dev_shm_is_not_followed(shm_objects: ShmObjects, tmp_path: Path) -> None:
    target = tmp_path / "not-shared-memory"
    target.write_bytes(b"\0" * 64)
    link = Path(SHM_DIR) / f"gradserve-test-link-{uuid.uuid4().hex[:8]}"
    link.symlink_to(target)
    try:
        with pytest.raises(SharedMemoryError, match="cannot open"):
            registry().register_system("r", "/" + link.name, 0, 16)
    finally:
        link.unlink()


def test_region_must_lie_within_its_object(shm_objects: ShmObjects) -> None:
    shm = registry()
    obj = shm_objects(100)
    with pytest.raises(SharedMemoryError, match="past the end"):
        shm.register_system("r", obj.key, 90, 11)
    with pytest.raises(SharedMemoryError, match="positive"):
        shm.register_system("r", obj.key, 0, 0)
    shm.register_system("r", obj.key, 90, 10)  # exactly to the end is fine


def test_input_is_a_view_of_the_region(shm_objects: ShmObjects) -> None:
    shm = registry()
    obj = shm_objects(8192)
    x = torch.arange(6, dtype=torch.float32)
    obj.write(4096 + 8, x.numpy().tobytes())
    # A region at an offset that is not page-aligned; the tensor 8 bytes into it.
    shm.register_system("r", obj.key, 4096, 64)
    t = v2_tensors.shm_input(shm, ShmRef("r", 24, 8), "input 'x'", FP32, (2, 3), 6)
    assert t.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    obj.write(4096 + 8, torch.full((1,), 7.0).numpy().tobytes())
    assert t[0, 0].item() == 7.0  # no copy: the client's later write shows


@pytest.mark.parametrize(
    ("ref", "expected", "error", "needle"),
    [
        (ShmRef("r", 24, 48), 24, SharedMemoryError, "past the end of region"),  # 48 + 24 > 64
        (ShmRef("r", 24, 2**62), 24, SharedMemoryError, "past the end of region"),
        (ShmRef("r", 2**62, 0), 2**62, SharedMemoryError, "past the end of region"),
        (ShmRef("r", 20, 0), 24, InvalidInput, "need 24 bytes"),  # size disagrees with the shape: 422
        (ShmRef("r", 28, 0), 24, InvalidInput, "need 24 bytes"),
        (ShmRef("nope", 24, 0), 24, RegionNotFound, "'nope'"),
    ],
)
def test_lying_offsets_and_sizes(
    shm_objects: ShmObjects, ref: ShmRef, expected: int, error: type[Exception], needle: str
) -> None:
    shm = registry()
    obj = shm_objects(64)
    shm.register_system("r", obj.key, 0, 64)
    with pytest.raises(error, match=needle):
        shm.input_view(ref, "input 'x'", expected, 4)


def test_misaligned_input_is_copied_not_misread(shm_objects: ShmObjects) -> None:
    shm = registry()
    obj = shm_objects(64)
    obj.write(1, torch.tensor([1.5, -2.0]).numpy().tobytes())
    shm.register_system("r", obj.key, 0, 64)
    t = v2_tensors.shm_input(shm, ShmRef("r", 8, 1), "input 'x'", FP32, (2,), 2)
    assert t.tolist() == [1.5, -2.0]


def test_a_region_that_disappears_is_a_clean_error(shm_objects: ShmObjects) -> None:
    shm = registry()
    truncated, unlinked = shm_objects(4096), shm_objects(4096)
    shm.register_system("t", truncated.key, 0, 4096)
    shm.register_system("u", unlinked.key, 0, 4096)
    ref = ShmRef("t", 16, 0)
    os.truncate(truncated.path, 8)  # touching the mapping now would be SIGBUS
    with pytest.raises(SharedMemoryError, match="truncated to 8 bytes"):
        shm.input_view(ref, "input 'x'", 16, 4)
    with pytest.raises(SharedMemoryError, match="truncated"):
        shm.output_slot("y", ref)
    unlinked.path.unlink()
    with pytest.raises(SharedMemoryError, match="removed"):
        shm.input_view(ShmRef("u", 16, 0), "input 'x'", 16, 4)


def test_output_is_written_into_the_region(shm_objects: ShmObjects) -> None:
    shm = registry()
    obj = shm_objects(256)
    shm.register_system("o", obj.key, 128, 64)
    slot = shm.output_slot("y", ShmRef("o", 32, 16))
    y = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    v2_tensors.write_shm_outputs([slot], {"y": y[:4]})
    assert obj.read(128 + 16, 16) == y[:4].numpy().tobytes()
    with pytest.raises(SharedMemoryError, match="has 32 bytes but shared_memory_byte_size gives it 16"):
        v2_tensors.write_shm_outputs([shm.output_slot("y", ShmRef("o", 16, 16))], {"y": y})
    with pytest.raises(SharedMemoryError, match="past the end of region"):
        shm.output_slot("y", ShmRef("o", 64, 8))


@pytest.mark.parametrize("through_mapping", [False, True])
def test_both_write_paths_write_the_same_bytes(shm_objects: ShmObjects, through_mapping: bool) -> None:
    # os.pwrite (the default) and a copy through the mapping (the trusted-clients
    # setting): the same bytes at the same place, nothing around them touched.
    shm = registry(shared_memory_write_through_mapping=through_mapping)
    obj = shm_objects(8192)
    obj.write(0, b"\xab" * 8192)
    shm.register_system("o", obj.key, 4096 + 100, 2048)  # a region off a page boundary
    y = torch.arange(256, dtype=torch.float32)
    v2_tensors.write_shm_outputs([shm.output_slot("y", ShmRef("o", 1024, 12))], {"y": y})
    assert obj.read(4096 + 112, 1024) == y.numpy().tobytes()
    assert obj.read(4096 + 100, 12) == b"\xab" * 12
    assert obj.read(4096 + 112 + 1024, 8192 - (4096 + 112 + 1024)) == b"\xab" * (8192 - 4096 - 112 - 1024)
    v2_tensors.write_shm_outputs([shm.output_slot("z", ShmRef("o", 0, 2048))], {"z": y[:0]})  # zero bytes
    assert obj.read(4096 + 100, 12) == b"\xab" * 12


@pytest.mark.parametrize("through_mapping", [False, True])
def test_output_into_a_region_truncated_after_the_check_does_not_crash(
    shm_objects: ShmObjects, through_mapping: bool
) -> None:
    # Both write paths check the object before writing (the copy through the mapping
    # is left with the race of a truncation during the copy itself).
    shm = registry(shared_memory_write_through_mapping=through_mapping)
    obj = shm_objects(4096)
    shm.register_system("o", obj.key, 0, 4096)
    slot = shm.output_slot("y", ShmRef("o", 4096, 0))
    os.truncate(obj.path, 0)
    with pytest.raises(SharedMemoryError, match="truncated"):
        v2_tensors.write_shm_outputs([slot], {"y": torch.zeros(1024)})


def test_unregister_under_a_live_view_keeps_the_memory(shm_objects: ShmObjects) -> None:
    shm = registry()
    obj = shm_objects(64)
    obj.write(0, torch.tensor([3.0]).numpy().tobytes())
    shm.register_system("r", obj.key, 0, 64)
    t = v2_tensors.shm_input(shm, ShmRef("r", 4, 0), "input 'x'", FP32, (1,), 1)
    shm.unregister_system("r")
    gc.collect()
    assert t.item() == 3.0  # the mapping outlives the registration while viewed
    with pytest.raises(RegionNotFound):
        shm.input_view(ShmRef("r", 4, 0), "input 'x'", 4, 4)
    shm.register_system("r", obj.key, 0, 64)  # the name is free again


def test_region_limit_and_off_switch(shm_objects: ShmObjects) -> None:
    obj = shm_objects(64)
    shm = registry(shared_memory_max_regions=2)
    shm.register_system("a", obj.key, 0, 8)
    shm.register_system("b", obj.key, 0, 8)
    with pytest.raises(SharedMemoryError, match="shared_memory_max_regions"):
        shm.register_system("c", obj.key, 0, 8)
    off = registry(shared_memory_enabled=False)
    assert off.extensions == ()
    for call in (
        lambda: off.register_system("a", obj.key, 0, 8),
        lambda: off.system_status(""),
        lambda: off.unregister_system(""),
        lambda: off.input_view(ShmRef("a", 4), "input 'x'", 4, 4),
        lambda: off.output_slot("y", ShmRef("a", 4)),
        lambda: off.register_cuda("g", b"\0" * 64, 0, 8),
    ):
        with pytest.raises(NotSupported, match="shared_memory_enabled"):
            call()


def test_cuda_shared_memory_is_refused_clearly() -> None:
    shm = registry()
    with pytest.raises(NotSupported, match="CUDA shared memory"):
        shm.register_cuda("g", b"\0" * 64, 0, 1024)
    assert shm.cuda_status("") == []
    shm.unregister_cuda("")  # cleaning up (perf_analyzer does at start) succeeds
    with pytest.raises(RegionNotFound):
        shm.cuda_status("g")


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, None),
        ({"binary_data_size": 4}, None),
        ({"shared_memory_region": "r", "shared_memory_byte_size": 8}, ShmRef("r", 8, 0)),
        (
            {"shared_memory_region": "r", "shared_memory_byte_size": 8, "shared_memory_offset": 16},
            ShmRef("r", 8, 16),
        ),
    ],
)
def test_tensor_parameters(params: dict[str, object], expected: ShmRef | None) -> None:
    assert ref_from_params(params, "input 'x'") == expected


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"shared_memory_byte_size": 8}, "without shared_memory_region"),
        ({"shared_memory_region": "r"}, "needs shared_memory_byte_size"),
        ({"shared_memory_region": 3, "shared_memory_byte_size": 8}, "non-empty string"),
        ({"shared_memory_region": "r", "shared_memory_byte_size": -8}, "non-negative"),
        ({"shared_memory_region": "r", "shared_memory_byte_size": True}, "non-negative"),
        (
            {"shared_memory_region": "r", "shared_memory_byte_size": 8, "shared_memory_offset": "4"},
            "non-negative",
        ),
    ],
)
def test_bad_tensor_parameters(params: dict[str, object], needle: str) -> None:
    with pytest.raises(MalformedRequest, match=needle):
        ref_from_params(params, "input 'x'")
