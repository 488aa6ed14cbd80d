"""tritonclient.grpc shared-memory and streaming checks against a running gradserve, run
as a separate process (see tritonclient_grpc_checks.py for why: tritonclient.grpc and
gradserve's stubs cannot share one protobuf pool).

    python tests/e2e/tritonclient_shm_stream_checks.py HOST:HTTP_PORT HOST:GRPC_PORT GROUP ...

Groups: ``shm`` (Triton's system shared-memory example over gRPC, unchanged),
``shm_cross`` (a region registered with tritonclient.http used with tritonclient.grpc),
``stream`` (start_stream / async_stream_infer, answers by id, errors per request),
``stream_shm`` (streamed requests whose tensors live in shared memory).
Exit status 0 when every check in the named groups passes.
"""

from __future__ import annotations

import queue
import sys
import uuid
from collections.abc import Callable

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

X = np.array([[-2.0, -0.5, 0.0, 1.5], [3.0, -4.0, 5.0, 0.25]], np.float32)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def check_shm(http_url: str, grpc_url: str) -> None:
    """Triton's simple_grpc_shm_client, op for op: create, register, set inputs, infer
    with inputs and outputs in shared memory, read the outputs, unregister, destroy."""
    c = grpcclient.InferenceServerClient(grpc_url)
    assert "system_shared_memory" in c.get_server_metadata(as_json=True)["extensions"]
    in_name, out_name = unique("input"), unique("output")
    in_handle = shm.create_shared_memory_region(in_name, "/" + in_name, X.nbytes)
    out_handle = shm.create_shared_memory_region(out_name, "/" + out_name, 2 * X.nbytes)
    try:
        shm.set_shared_memory_region(in_handle, [X])
        c.register_system_shared_memory(in_name, "/" + in_name, X.nbytes)
        c.register_system_shared_memory(out_name, "/" + out_name, 2 * X.nbytes)
        status = c.get_system_shared_memory_status(as_json=True)["regions"]
        assert status[out_name]["key"] == "/" + out_name, status
        x = grpcclient.InferInput("x", list(X.shape), "FP32")
        x.set_shared_memory(in_name, X.nbytes)
        y = grpcclient.InferRequestedOutput("y")
        y.set_shared_memory(out_name, X.nbytes)
        g = grpcclient.InferRequestedOutput("grad_x")
        g.set_shared_memory(out_name, X.nbytes, offset=X.nbytes)
        result = c.infer("relu", [x], outputs=[y, g], request_id="shm1")
        assert result.get_response().id == "shm1"
        out = result.get_output("y")
        assert out is not None and list(out.shape) == list(X.shape)
        got_y = shm.get_contents_as_numpy(out_handle, np.float32, list(X.shape))
        got_g = shm.get_contents_as_numpy(out_handle, np.float32, list(X.shape), offset=X.nbytes)
        np.testing.assert_array_equal(got_y, np.maximum(X, 0))
        np.testing.assert_array_equal(got_g, (X > 0).astype(np.float32))
        # A lying size is INVALID_ARGUMENT, and the server goes on.
        x.set_shared_memory(in_name, X.nbytes + 4)
        try:
            c.infer("relu", [x])
            raise AssertionError("a lying byte size was accepted")
        except InferenceServerException as exc:
            assert exc.status() == "StatusCode.INVALID_ARGUMENT" and "need 32 bytes" in exc.message(), exc
        c.unregister_system_shared_memory(in_name)
        c.unregister_system_shared_memory(out_name)
        assert in_name not in c.get_system_shared_memory_status(as_json=True).get("regions", {})
    finally:
        shm.destroy_shared_memory_region(in_handle)
        shm.destroy_shared_memory_region(out_handle)


def check_shm_cross(http_url: str, grpc_url: str) -> None:
    """One registry: registered with tritonclient.http, used and unregistered with
    tritonclient.grpc (Triton's behaviour)."""
    h = httpclient.InferenceServerClient(http_url)
    c = grpcclient.InferenceServerClient(grpc_url)
    region = unique("cross")
    handle = shm.create_shared_memory_region(region, "/" + region, 2 * X.nbytes)
    try:
        shm.set_shared_memory_region(handle, [X])
        h.register_system_shared_memory(region, "/" + region, 2 * X.nbytes)
        x = grpcclient.InferInput("x", list(X.shape), "FP32")
        x.set_shared_memory(region, X.nbytes)
        y = grpcclient.InferRequestedOutput("y")
        y.set_shared_memory(region, X.nbytes, offset=X.nbytes)
        c.infer("relu", [x], outputs=[y])
        got = shm.get_contents_as_numpy(handle, np.float32, list(X.shape), offset=X.nbytes)
        np.testing.assert_array_equal(got, np.maximum(X, 0))
        c.unregister_system_shared_memory(region)
        assert all(r["name"] != region for r in h.get_system_shared_memory_status())
    finally:
        shm.destroy_shared_memory_region(handle)


def check_stream(http_url: str, grpc_url: str) -> None:
    """start_stream / async_stream_infer / stop_stream, unchanged: 200 requests in
    flight on one stream, answers matched by id, a bad request answered with an error
    through the callback while the stream goes on."""
    c = grpcclient.InferenceServerClient(grpc_url)
    answers: queue.Queue[tuple[grpcclient.InferResult | None, InferenceServerException | None]] = (
        queue.Queue()
    )
    c.start_stream(callback=lambda result, error: answers.put((result, error)))
    sent = {}
    for i in range(200):
        x = np.array([i - 100.0, 100.0 - i], np.float32)
        t = grpcclient.InferInput("x", [2], "FP32")
        t.set_data_from_numpy(x)
        c.async_stream_infer("relu", [t], request_id=f"r{i}", outputs=[grpcclient.InferRequestedOutput("y")])
        sent[f"r{i}"] = np.maximum(x, 0)
        if i == 100:
            bad = grpcclient.InferInput("x", [2], "INT64")
            bad.set_data_from_numpy(np.zeros(2, np.int64))
            c.async_stream_infer("relu", [bad], request_id="bad")
    got, errors = {}, []
    for _ in range(201):
        result, error = answers.get(timeout=60)
        if error is not None:
            errors.append(error.message())
        else:
            assert result is not None
            got[result.get_response().id] = result.as_numpy("y")
    c.stop_stream()
    assert sorted(got) == sorted(sent), sorted(set(sent) ^ set(got))
    for key, expected in sent.items():
        np.testing.assert_array_equal(got[key], expected)
    assert len(errors) == 1 and "int64" in errors[0], errors
    # The client is usable for a new stream and for unary calls after.
    c.start_stream(callback=lambda result, error: answers.put((result, error)))
    t = grpcclient.InferInput("x", [1], "FP32")
    t.set_data_from_numpy(np.array([-1.0], np.float32))
    c.async_stream_infer("relu", [t], request_id="again")
    result, error = answers.get(timeout=60)
    c.stop_stream()
    assert error is None and result is not None and result.get_response().id == "again"
    assert c.infer("relu", [t]).as_numpy("y").tolist() == [0.0]


def check_stream_shm(http_url: str, grpc_url: str) -> None:
    """Streamed requests whose input and output live in shared memory."""
    c = grpcclient.InferenceServerClient(grpc_url)
    region = unique("stream")
    n = 16
    handle = shm.create_shared_memory_region(region, "/" + region, 2 * n * X.nbytes)
    try:
        inputs = [X * (i + 1) for i in range(n)]
        shm.set_shared_memory_region(handle, inputs)
        c.register_system_shared_memory(region, "/" + region, 2 * n * X.nbytes)
        answers: queue.Queue[tuple[object, object]] = queue.Queue()
        c.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i in range(n):
            x = grpcclient.InferInput("x", list(X.shape), "FP32")
            x.set_shared_memory(region, X.nbytes, offset=i * X.nbytes)
            y = grpcclient.InferRequestedOutput("y")
            y.set_shared_memory(region, X.nbytes, offset=(n + i) * X.nbytes)
            c.async_stream_infer("relu", [x], outputs=[y], request_id=str(i))
        for _ in range(n):
            _, error = answers.get(timeout=60)
            assert error is None, error
        c.stop_stream()
        for i in range(n):
            got = shm.get_contents_as_numpy(handle, np.float32, list(X.shape), offset=(n + i) * X.nbytes)
            np.testing.assert_array_equal(got, np.maximum(inputs[i], 0))
        c.unregister_system_shared_memory(region)
    finally:
        shm.destroy_shared_memory_region(handle)


CHECKS: dict[str, Callable[[str, str], None]] = {
    "shm": check_shm,
    "shm_cross": check_shm_cross,
    "stream": check_stream,
    "stream_shm": check_stream_shm,
}


def main(argv: list[str]) -> int:
    http_url, grpc_url, *groups = argv
    for group in groups or list(CHECKS):
        CHECKS[group](http_url, grpc_url)
        print(f"ok   {group}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
