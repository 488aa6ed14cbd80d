"""The work: the two ops (shared with bench/floor_app.py), what each request asks for,
the request bodies (and the shared-memory regions some of them name), and the same op
measured in-process with torch (no transport)."""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import resource
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gradserve.bench.results import Row, percentile
from gradserve.bench.servers import http_get

if TYPE_CHECKING:
    import torch

SMALL_OP = "cross_entropy"
LARGE_OP = "relu"
SMALL_SHAPE = (8, 10)
MiB = 1024 * 1024
LARGE_BYTES = 16 * MiB
LARGE_ELEMENTS = LARGE_BYTES // 4
NOOP_PREFIX = "noop_"  # the floor app's do-nothing model for an op: noop_<op>

InputTensor = tuple[str, str, list[int], bytes]  # name, V2 datatype, shape, raw bytes


# -- the ops -----------------------------------------------------------------------


def run_small_op(x: torch.Tensor, target: torch.Tensor, grad: bool) -> dict[str, torch.Tensor]:
    """cross_entropy (mean) and, if asked, its gradient: softmax(x) - onehot, over N."""
    import torch
    import torch.nn.functional as F

    out = {"loss": F.cross_entropy(x, target)}
    if grad:
        g = torch.softmax(x, dim=1)
        g[torch.arange(x.shape[0]), target] -= 1.0
        out["grad_input"] = g.div_(x.shape[0])
    return out


def run_large_op(x: torch.Tensor, grad: bool) -> dict[str, torch.Tensor]:
    """relu and, if asked, its gradient for an all-ones upstream gradient."""
    import torch

    out = {"y": torch.relu(x)}
    if grad:
        out["grad_x"] = (x > 0).to(x.dtype)
    return out


# -- what each request asks for ----------------------------------------------------


@dataclass
class Work:
    """What each request asks for (the outputs, gradients or not), and gradserve's V2
    metadata and config of each op: ``{op: {"metadata": ..., "config": ...}}``."""

    small_outputs: list[str]
    large_outputs: list[str]
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def small_grad(self) -> bool:
        return "grad_input" in self.small_outputs

    @property
    def large_grad(self) -> bool:
        return "grad_x" in self.large_outputs

    def model_metadata(self, op: str) -> dict[str, Any]:
        """The op's V2 model metadata ({} if unknown)."""
        return dict(self.metadata.get(op, {}).get("metadata", {}))

    def model_config(self, op: str) -> dict[str, Any]:
        """The op's V2 model config ({} if unknown)."""
        return dict(self.metadata.get(op, {}).get("config", {}))


def discover_work(base_url: str | None) -> Work:
    """Read gradserve's V2 metadata and config: perf_analyzer asks for every output the
    metadata lists, so every other client (and the floors) ask for the same ones."""
    work = Work(["loss", "grad_input"], ["y"])
    if base_url is None:
        return work
    for op in (SMALL_OP, LARGE_OP):
        with contextlib.suppress(OSError, ValueError):
            code, meta = http_get(f"{base_url}/v2/models/{op}")
            ccode, conf = http_get(f"{base_url}/v2/models/{op}/config")
            if code == 200 and ccode == 200:
                metadata, config = json.loads(meta), json.loads(conf)
                work.metadata[op] = {"metadata": metadata, "config": config}
                names = [o["name"] for o in metadata.get("outputs", [])]
                if op == SMALL_OP:
                    work.small_outputs = names
    return work


# -- request bodies ----------------------------------------------------------------


def small_arrays() -> tuple[bytes, bytes, list[list[float]], list[int]]:
    """The 8x10 input and 8 targets: raw little-endian bytes and JSON lists."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal(SMALL_SHAPE).astype("<f4")
    t = rng.integers(0, SMALL_SHAPE[1], SMALL_SHAPE[0]).astype("<i8")
    return x.tobytes(), t.tobytes(), x.tolist(), t.tolist()


def large_bytes() -> bytes:
    import numpy as np

    return np.random.default_rng(1).standard_normal(LARGE_ELEMENTS).astype("<f4").tobytes()


def small_inputs() -> list[InputTensor]:
    xb, tb, _, _ = small_arrays()
    return [("input", "FP32", list(SMALL_SHAPE), xb), ("target", "INT64", [SMALL_SHAPE[0]], tb)]


def large_inputs(rank: int = 2) -> list[InputTensor]:
    """16 MiB of float32 named x: [2048, 2048], or flat for a rank-1 model."""
    side = int(LARGE_ELEMENTS**0.5)
    return [("x", "FP32", [side, side] if rank == 2 else [LARGE_ELEMENTS], large_bytes())]


def native_small_body(work: Work) -> bytes:
    """The /v1 JSON body of the small request."""
    _, _, x, t = small_arrays()
    return json.dumps({"input": x, "target": t, "grad": work.small_grad}).encode()


def v2_binary_body(inputs: list[InputTensor], outputs: list[str]) -> tuple[bytes, dict[str, str]]:
    """A V2 binary-extension request (body, headers), laid out as perf_analyzer sends it."""
    header = {
        "id": "",
        "inputs": [
            {"name": n, "shape": s, "datatype": d, "parameters": {"binary_data_size": len(b)}}
            for n, d, s, b in inputs
        ],
        "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    headers = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}
    return head + b"".join(b for *_, b in inputs), headers


@contextlib.contextmanager
def shm_regions(
    base_url: str, inputs: list[InputTensor], outputs: list[str], output_bytes: int
) -> Iterator[dict[str, str]]:
    """POSIX shared memory objects for the inputs (written once, here) and outputs
    (``output_bytes`` each), registered with the server as regions named like the
    tensors; yields tensor name -> region name, and unregisters and removes them after."""
    tag = uuid.uuid4().hex[:8]
    regions: dict[str, str] = {}
    made: list[str] = []
    try:
        for name, size, data in [(n, len(b), b) for n, _, _, b in inputs] + [
            (o, output_bytes, b"") for o in outputs
        ]:
            region = f"bench_{tag}_{name}"
            path = f"/dev/shm/{region}"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            made.append(path)
            try:
                os.ftruncate(fd, size)
                if data:
                    with mmap.mmap(fd, size) as m:
                        m[:] = data
            finally:
                os.close(fd)
            body = json.dumps({"key": "/" + region, "offset": 0, "byte_size": size}).encode()
            url = f"{base_url}/v2/systemsharedmemory/region/{region}/register"
            with urllib.request.urlopen(urllib.request.Request(url, body, method="POST"), timeout=10):
                pass
            regions[name] = region
        yield regions
    finally:
        for region in regions.values():
            url = f"{base_url}/v2/systemsharedmemory/region/{region}/unregister"
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(urllib.request.Request(url, b"", method="POST"), timeout=10),
            ):
                pass
        for path in made:
            with contextlib.suppress(OSError):
                os.unlink(path)


def shm_body(
    inputs: list[InputTensor], outputs: list[str], regions: dict[str, str], output_bytes: int
) -> bytes:
    """A V2 JSON request whose inputs and outputs all live in ``regions`` (whole regions)."""
    doc = {
        "id": "",
        "inputs": [
            {
                "name": n,
                "shape": s,
                "datatype": d,
                "parameters": {"shared_memory_region": regions[n], "shared_memory_byte_size": len(b)},
            }
            for n, d, s, b in inputs
        ],
        "outputs": [
            {
                "name": o,
                "parameters": {"shared_memory_region": regions[o], "shared_memory_byte_size": output_bytes},
            }
            for o in outputs
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


# -- in-process torch --------------------------------------------------------------


def measure_torch(section: str, work: Work, duration_s: float) -> Row:
    """The op in a loop on one thread (as the server's worker): no transport at all."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if section == "small":
            xb, tb, _, _ = small_arrays()
            x = torch.frombuffer(bytearray(xb), dtype=torch.float32).reshape(SMALL_SHAPE)
            t = torch.frombuffer(bytearray(tb), dtype=torch.int64)

            def step() -> None:
                run_small_op(x, t, work.small_grad)

        else:
            xl = torch.frombuffer(bytearray(large_bytes()), dtype=torch.float32)

            def step() -> None:
                run_large_op(xl, work.large_grad)

        for _ in range(3):
            step()
        lat: list[float] = []
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t_end = time.perf_counter() + duration_s
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                break
            step()
            lat.append(time.perf_counter() - t0)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        torch.set_num_threads(threads)
    lat.sort()
    row = Row(section, "torch", "in-process", "-", 1, "loop, 1 thread")
    row.req_s = len(lat) / sum(lat)
    row.p50_ms, row.p99_ms = percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3
    row.server_cpu = 100 * (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / duration_s
    return row
