"""Triton's system shared-memory examples with unmodified clients against a real
`gradserve serve` process: tritonclient.http with tritonclient.utils.shared_memory here,
tritonclient.grpc in a child process (tritonclient_shm_stream_checks.py: its protos
would clash with gradserve's in this process)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from tests.conftest import ServerProcess

SCRIPT = Path(__file__).with_name("tritonclient_shm_stream_checks.py")


def run_checks(server: ServerProcess, *groups: str) -> None:
    r = subprocess.run(
        [sys.executable, str(SCRIPT), server.url.removeprefix("http://"), server.grpc_target, *groups],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for group in groups:
        assert f"ok   {group}" in r.stdout


def test_tritonclient_http_shared_memory_example(server: ServerProcess) -> None:
    """Triton's simple_http_shm_client, op for op, on a loss and its gradient."""
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    assert "system_shared_memory" in client.get_server_metadata()["extensions"]
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((8, 10)).astype(np.float32)
    target = rng.integers(0, 10, 8).astype(np.int64)
    tag = uuid.uuid4().hex[:8]
    in_name, out_name = f"input_{tag}", f"output_{tag}"
    in_size = logits.nbytes + target.nbytes
    in_handle = shm.create_shared_memory_region(in_name, "/" + in_name, in_size)
    out_handle = shm.create_shared_memory_region(out_name, "/" + out_name, 4 + logits.nbytes)
    try:
        shm.set_shared_memory_region(in_handle, [logits, target])
        client.register_system_shared_memory(in_name, "/" + in_name, in_size)
        client.register_system_shared_memory(out_name, "/" + out_name, 4 + logits.nbytes)
        status = {r["name"]: r for r in client.get_system_shared_memory_status()}
        assert status[in_name] == {"name": in_name, "key": "/" + in_name, "offset": 0, "byte_size": in_size}

        x = httpclient.InferInput("input", list(logits.shape), "FP32")
        x.set_shared_memory(in_name, logits.nbytes)
        t = httpclient.InferInput("target", list(target.shape), "INT64")
        t.set_shared_memory(in_name, target.nbytes, offset=logits.nbytes)
        loss = httpclient.InferRequestedOutput("loss", binary_data=True)
        loss.set_shared_memory(out_name, 4)
        grad = httpclient.InferRequestedOutput("grad_input", binary_data=True)
        grad.set_shared_memory(out_name, logits.nbytes, offset=4)
        result = client.infer("cross_entropy", [x, t], outputs=[loss, grad], request_id="h1")
        assert result.get_response()["id"] == "h1"
        assert result.get_output("grad_input")["shape"] == [8, 10]

        import torch

        xt = torch.tensor(logits, requires_grad=True)
        ref = torch.nn.functional.cross_entropy(xt, torch.from_numpy(target))
        ref.backward()
        got_loss = shm.get_contents_as_numpy(out_handle, np.float32, [])
        got_grad = shm.get_contents_as_numpy(out_handle, np.float32, [8, 10], offset=4)
        assert float(got_loss) == pytest.approx(ref.item(), rel=1e-6)
        np.testing.assert_allclose(got_grad, xt.grad.numpy(), rtol=1e-5, atol=1e-7)

        # A lying offset is a 400 naming the region, never a read outside it.
        t.set_shared_memory(in_name, target.nbytes, offset=in_size - 8)
        with pytest.raises(InferenceServerException, match="past the end of region") as info:
            client.infer("cross_entropy", [x, t])
        assert info.value.status() == "400"

        client.unregister_system_shared_memory(in_name)
        client.unregister_system_shared_memory()
        assert client.get_system_shared_memory_status() == []
    finally:
        shm.destroy_shared_memory_region(in_handle)
        shm.destroy_shared_memory_region(out_handle)


def test_tritonclient_grpc_shared_memory_example(server: ServerProcess) -> None:
    run_checks(server, "shm")


def test_region_registered_over_http_used_over_grpc(server: ServerProcess) -> None:
    run_checks(server, "shm_cross")
