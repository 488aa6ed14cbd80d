"""The I/O-free core on its own: error mapping tables, retry timing, wire round trips.

These are pure functions, so they are tested directly; every path here is also
exercised end to end against real servers by the other client tests.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from gradserve_client import errors
from gradserve_client._core import (
    InferRequest,
    RetryPolicy,
    decode_http_infer,
    encode_params,
    grpc_error,
    http_error,
    http_infer_request,
    to_wire,
)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.InvalidInputError),
        (404, errors.NotFoundError),
        (413, errors.TooLargeError),
        (422, errors.InvalidInputError),
        (429, errors.OverloadedError),
        (503, errors.UnavailableError),
        (504, errors.TimedOutError),
        (500, errors.ServerError),
        (507, errors.ServerError),
    ],
)
def test_http_status_table(status: int, cls: type[errors.GradservError]) -> None:
    error = http_error(status, {"retry-after": "1"}, b'{"error": "the message"}')
    assert type(error) is cls and error.message == "the message" and error.status == status
    assert error.retry_after_s == 1.0


def test_http_native_error_body_and_non_json() -> None:
    native = http_error(404, {}, b'{"error": {"code": "op_not_found", "message": "unknown op"}}')
    assert native.message == "unknown op"
    assert http_error(502, {}, b"<html>bad gateway</html>").message == "<html>bad gateway</html>"


@pytest.mark.parametrize(
    ("code", "details", "cls"),
    [
        ("INVALID_ARGUMENT", "bad", errors.InvalidInputError),
        ("NOT_FOUND", "no op", errors.NotFoundError),
        ("RESOURCE_EXHAUSTED", "queue full (1 requests waiting); retry later", errors.OverloadedError),
        ("RESOURCE_EXHAUSTED", "input 'x': 99 elements is over the limit of 9", errors.TooLargeError),
        ("RESOURCE_EXHAUSTED", "Received message larger than max (9 vs. 4)", errors.TooLargeError),
        ("RESOURCE_EXHAUSTED", "cuda out of memory for this batch", errors.ServerError),
        ("UNAVAILABLE", "draining", errors.UnavailableError),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", errors.TimedOutError),
        ("INTERNAL", "internal error", errors.ServerError),
    ],
)
def test_grpc_code_table(code: str, details: str, cls: type[errors.GradservError]) -> None:
    error = grpc_error(code, details)
    assert type(error) is cls and error.grpc_code == code and error.message == details


@pytest.mark.parametrize(
    ("error_code", "cls"),
    [
        ("queue_full", errors.OverloadedError),
        ("request_too_large", errors.TooLargeError),
        ("device_out_of_memory", errors.ServerError),
    ],
)
def test_resource_exhausted_follows_the_error_code_trailer(
    error_code: str, cls: type[errors.GradservError]
) -> None:
    # The trailer wins over the message: no parsing needed.
    assert type(grpc_error("RESOURCE_EXHAUSTED", "whatever", error_code)) is cls


def test_only_overload_and_unavailability_are_retryable() -> None:
    retryable = {c for c in vars(errors).values() if isinstance(c, type) and getattr(c, "retryable", False)}
    assert retryable == {errors.OverloadedError, errors.UnavailableError}


def test_backoff_is_jittered_capped_and_honours_retry_after() -> None:
    policy = RetryPolicy(max_retries=5, initial_backoff_s=0.1, max_backoff_s=1.0)
    rng = random.Random(0)
    delays = [policy.backoff_s(n, rng=rng) for n in range(8) for _ in range(50)]
    assert min(delays) >= 0 and max(delays) <= 1.0
    assert len(set(delays)) == len(delays)  # jitter: no two alike
    assert all(policy.backoff_s(0, rng=rng) <= 0.1 for _ in range(50))
    assert policy.backoff_s(0, retry_after_s=0.5, rng=rng) >= 0.5
    assert policy.backoff_s(0, retry_after_s=30.0, rng=rng) <= 1.0  # Retry-After is capped too
    ignore = RetryPolicy(initial_backoff_s=0.1, honor_retry_after=False)
    assert ignore.backoff_s(0, retry_after_s=30.0, rng=rng) <= 0.1


def test_next_delay_stops_at_the_budget_and_the_deadline() -> None:
    policy = RetryPolicy(max_retries=2, initial_backoff_s=0.01, max_backoff_s=0.01)
    busy = errors.OverloadedError("queue full")
    assert policy.next_delay(busy, 1, remaining_s=10) is not None
    assert policy.next_delay(busy, 2, remaining_s=10) is not None
    assert policy.next_delay(busy, 3, remaining_s=10) is None  # budget spent
    assert policy.next_delay(busy, 1, remaining_s=0.0) is None  # no time left
    assert policy.next_delay(errors.TooLargeError("big"), 1, remaining_s=10) is None


def test_wire_dtypes_and_list_defaults() -> None:
    assert to_wire("x", [1.0, 2.0]).datatype == "FP32"
    assert to_wire("x", [1, 2], float_input=True).datatype == "FP32"
    assert to_wire("target", [1, 2]).datatype == "INT64"
    assert to_wire("x", np.zeros(2, ">f8")).array.dtype == np.dtype("<f8")  # big-endian input
    assert to_wire("x", np.zeros((2, 3), np.float16)).shape == (2, 3)
    with pytest.raises(errors.InvalidInputError, match="no V2 datatype"):
        to_wire("x", np.array(["a"]))
    assert encode_params({"shape": (500, 500), "seed": None, "gain": np.float32(2.0)}) == {
        "shape": "500,500",
        "gain": 2.0,
    }


def test_binary_request_layout() -> None:
    x = to_wire("x", np.arange(3, dtype=np.float32))
    request = http_infer_request(InferRequest("relu", [x], {"dim": 0}, ("y",)), binary=True)
    head_len = int(request.headers["Inference-Header-Content-Length"])
    assert request.body[head_len:] == np.arange(3, dtype="<f4").tobytes()
    assert b'"binary_data_size":12' in request.body[:head_len]
    assert b'"binary_data":true' in request.body[:head_len]


def test_binary_answer_decodes_to_writable_arrays() -> None:
    head = b'{"outputs":[{"name":"y","datatype":"BF16","shape":[2],"parameters":{"binary_data_size":4}},'
    head += b'{"name":"n","datatype":"INT64","shape":[],"data":[7]}]}'
    bf16 = np.array([1.5, -2.0], np.float32).view(np.uint32) >> 16
    body = head + bf16.astype("<u2").tobytes()
    out = decode_http_infer({"inference-header-content-length": str(len(head))}, body)
    np.testing.assert_array_equal(out["y"], [1.5, -2.0])
    assert out["y"].dtype == np.float32 and out.datatypes["y"] == "BF16"
    assert out["n"].shape == () and int(out["n"]) == 7
    out["y"][0] = 0.0  # results are the caller's to modify
