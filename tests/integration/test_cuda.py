"""CUDA: the executor on a GPU agrees with the CPU, batches stay invariant there too,
and running out of device memory fails that batch only (507) while the server stays up.
Skipped cleanly where torch sees no GPU."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import torch

from gradserve.config import Settings
from gradserve.errors import DeviceOutOfMemory
from gradserve.executor import Executor
from gradserve.ops import build_registry
from gradserve.ops.registry import OpSpec
from gradserve.validation import Limits, resolve_outputs, validate_params, validate_tensors
from gradserve.warmup import example
from tests.conftest import ServerProcess

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

REGISTRY = build_registry()
# More elements than any GPU holds (300000^2 float32 = 360 GB).
ABSURD_SHAPE = [300_000, 300_000]


@pytest.fixture(scope="module")
def executors() -> Iterator[tuple[Executor, Executor]]:
    cpu = Executor(Settings(device="cpu"))
    cuda = Executor(Settings(device="cuda"))
    yield cpu, cuda
    cpu.shutdown()
    cuda.shutdown()


def _prepared(spec: OpSpec, grad: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any], frozenset[str]]:
    tensors, params = example(spec)
    params = validate_params(spec, params, lenient=False, ignore_unknown=False, limits=Limits(1 << 24, 16))
    checked = validate_tensors(spec, tensors, limits=Limits(1 << 24, 16))
    return checked, params, frozenset(resolve_outputs(spec, checked, None, grad))


@pytest.mark.parametrize("op", [s.name for s in REGISTRY])
def test_cuda_matches_cpu(op: str, executors: tuple[Executor, Executor]) -> None:
    cpu, cuda = executors
    spec = REGISTRY.get(op)
    for grad in (False, True):
        tensors, params, want = _prepared(spec, grad)
        [on_cpu] = cpu.run_sync(spec, [tensors], params, want)
        [on_gpu] = cuda.run_sync(spec, [tensors], params, want)
        assert on_gpu.keys() == on_cpu.keys()
        for name, expected in on_cpu.items():
            got = on_gpu[name]
            assert got.device.type == "cpu"  # answers come back to the host
            assert got.dtype == expected.dtype and got.shape == expected.shape, name
            if (spec.family == "init" and name == "weight") or spec.family == "lab":
                continue  # seeded draws are reproducible per device kind, not across kinds
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=f"{op}.{name}")


def test_cuda_seeded_init_is_reproducible(executors: tuple[Executor, Executor]) -> None:
    _, cuda = executors
    spec = REGISTRY.get("kaiming_normal")
    params = validate_params(
        spec, {"shape": [64, 32], "seed": 7}, lenient=False, ignore_unknown=False, limits=Limits(1 << 24, 16)
    )
    want = frozenset({"weight"})
    [a] = cuda.run_sync(spec, [{}], params, want)
    [b] = cuda.run_sync(spec, [{}], params, want)
    assert torch.equal(a["weight"], b["weight"])


@pytest.mark.parametrize(
    ("op", "make", "params"),
    [
        ("relu", lambda g, n: {"x": torch.randn(n, 7, generator=g)}, {}),
        ("gelu", lambda g, n: {"x": torch.randn(n, 5, generator=g)}, {"approximate": "tanh"}),
        ("log_softmax", lambda g, n: {"x": torch.randn(n, 10, generator=g)}, {}),
        (
            "cross_entropy",
            lambda g, n: {
                "input": torch.randn(n, 5, generator=g),
                "target": torch.randint(0, 5, (n,), generator=g),
            },
            {"reduction": "mean"},
        ),
        (
            "mse",
            lambda g, n: {"input": torch.randn(n, 4, generator=g), "target": torch.randn(n, 4, generator=g)},
            {},
        ),
    ],
)
def test_cuda_batched_equals_alone(
    op: str,
    make: Callable[[torch.Generator, int], dict[str, torch.Tensor]],
    params: dict[str, Any],
    executors: tuple[Executor, Executor],
) -> None:
    _, cuda = executors
    spec = REGISTRY.get(op)
    g = torch.Generator().manual_seed(3)
    requests = [validate_tensors(spec, make(g, 1 + i % 5), limits=Limits(1 << 24, 16)) for i in range(9)]
    checked = validate_params(spec, params, lenient=False, ignore_unknown=False, limits=Limits(1 << 24, 16))
    want = frozenset(resolve_outputs(spec, requests[0], None, True))
    batched = cuda.run_sync(spec, requests, checked, want)
    for request, answer in zip(requests, batched, strict=True):
        [alone] = cuda.run_sync(spec, [request], checked, want)
        for name in want:
            assert torch.equal(answer[name], alone[name]), (op, name)


def test_out_of_memory_fails_that_batch_only(executors: tuple[Executor, Executor]) -> None:
    _, cuda = executors
    spec = REGISTRY.get("zeros")
    params = validate_params(
        spec, {"shape": ABSURD_SHAPE}, lenient=False, ignore_unknown=False, limits=Limits(1 << 40, 16)
    )
    with pytest.raises(DeviceOutOfMemory) as oom:
        cuda.run_sync(spec, [{}], params, frozenset({"weight"}))
    assert oom.value.http_status == 507
    # The device is usable right after.
    relu = REGISTRY.get("relu")
    [out] = cuda.run_sync(relu, [{"x": torch.tensor([-1.0, 2.0])}], {}, frozenset({"y"}))
    assert out["y"].tolist() == [0.0, 2.0]


@pytest.mark.timeout(120)
def test_server_answers_507_on_oom_and_stays_up(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--device", "cuda", "--max-tensor-elements", str(1 << 40))
    with httpx.Client(base_url=server.url, timeout=60.0) as client:
        response = client.post("/v1/init/zeros", json={"shape": ABSURD_SHAPE})
        assert response.status_code == 507, response.text
        assert response.json()["error"]["code"] == "device_out_of_memory"
        assert client.get("/readyz").status_code == 200
        ok = client.post("/v1/activations/relu", json={"x": [-1.0, 2.0], "grad": True})
        assert ok.status_code == 200, ok.text
        assert ok.json()["y"]["data"] == [0.0, 2.0]
        metrics = client.get("/metrics").text
        assert "nv_gpu_memory_total_bytes{" in metrics
    assert server.proc.poll() is None
