"""Triton's perf_analyzer, unmodified, against a real `gradserve serve` over V2 HTTP and
gRPC: it reads model metadata, the model config and server metadata, then measures.

The binary comes from scripts/install_perf_analyzer.sh (`make perf-analyzer`; `make
test` runs it); where it could not be installed these tests skip with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, ServerProcess

PERF_ANALYZER = Path(os.environ.get("GRADSERVE_PERF_ANALYZER", ROOT / ".tools" / "perf_analyzer"))

pytestmark = pytest.mark.skipif(
    not os.access(PERF_ANALYZER, os.X_OK),
    reason=f"perf_analyzer not installed at {PERF_ANALYZER} (run: bash scripts/install_perf_analyzer.sh)",
)


def input_data(tmp_path: Path, name: str, data: dict[str, object]) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"data": [data]}))
    return path


def cross_entropy_data(tmp_path: Path) -> Path:
    # Losses need real data (class indices in range): random int64 would be refused.
    # Optional inputs left out of the file (weight, grad_loss) are not sent.
    rng = np.random.default_rng(0)
    return input_data(
        tmp_path,
        "cross_entropy",
        {
            "input": {"content": rng.standard_normal(32 * 10).round(4).tolist(), "shape": [32, 10]},
            "target": {"content": rng.integers(0, 10, 32).tolist(), "shape": [32]},
        },
    )


def run(server: ServerProcess, model: str, protocol: str, *args: str) -> str:
    url = server.url.removeprefix("http://") if protocol == "http" else server.grpc_target
    cmd = [
        str(PERF_ANALYZER),
        "-m",
        model,
        "-u",
        url,
        "-i",
        protocol,
        "--concurrency-range",
        "2",
        "--measurement-interval",
        "250",
        "--max-trials",
        "6",
        # A short check that it runs, not a benchmark: accept any 3 windows (the CI
        # machine is small and shared, so windows vary).
        "--stability-percentage",
        "999",
        *args,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "Throughput:" in out and "error" not in out.lower(), out
    return out


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_relu_with_shapes(server: ServerProcess, protocol: str) -> None:
    # Random data, shapes from --shape (every dim is -1 in the metadata).
    run(server, "relu", protocol, "--shape", "x:16,64", "--shape", "grad_y:16,64")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_cross_entropy_with_input_data(server: ServerProcess, protocol: str, tmp_path: Path) -> None:
    run(server, "cross_entropy", protocol, "--input-data", str(cross_entropy_data(tmp_path)))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_init_shape_input(server: ServerProcess, protocol: str, tmp_path: Path) -> None:
    # The weight shape as the INT64 input "shape"; over HTTP the outputs come back as
    # JSON. (Not --input-tensor-format json: perf_analyzer 2.50 fills JSON inputs from
    # the wrong number of bytes, e.g. 3 values for a [2, 3] FP32 tensor; we answer 400.)
    data = input_data(tmp_path, "normal", {"shape": {"content": [128, 64], "shape": [2]}})
    extra = ["--output-tensor-format", "json"] if protocol == "http" else []
    run(server, "normal", protocol, "--input-data", str(data), *extra)


def test_grpc_streaming(server: ServerProcess, tmp_path: Path) -> None:
    # ModelStreamInfer: each request on perf_analyzer's streams is answered by id.
    run(server, "cross_entropy", "grpc", "--streaming", "--input-data", str(cross_entropy_data(tmp_path)))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_system_shared_memory(server: ServerProcess, protocol: str) -> None:
    # perf_analyzer registers an input and an output region per tensor, names them in
    # every request and unregisters them at the end. It refuses to leave an optional
    # input out when tensors are in shared memory, so relu gets grad_y too.
    run(
        server, "relu", protocol, "--shared-memory", "system", "--shape", "x:16,64", "--shape", "grad_y:16,64"
    )
