"""The decode-plan cache of repeated gRPC headers (codecs/v2_grpc_plans.py): a request
decoded through its header's plan equals the full decoder's answer, and anything the
plan does not cover goes to the full decoder, which says what is wrong."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradserve.codecs import v2_grpc
from gradserve.codecs.v2_grpc_plans import HeaderCache
from gradserve.codecs.v2_protocol import V2Request
from gradserve.errors import GradservError
from gradserve.grpc.generated import inference_pb2 as pb
from gradserve.shm import SharedMemory
from tests.shm_objects import ShmObjects, shm_objects

__all__ = ["shm_objects"]  # the fixture, imported for pytest

LIMIT = 1 << 24


@pytest.fixture(autouse=True)
def cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeaderCache]:
    fresh = HeaderCache()
    monkeypatch.setattr(v2_grpc, "HEADERS", fresh)
    yield fresh


def _request(
    rid: str = "r1",
    rows: int = 3,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    outputs: tuple[str, ...] = ("loss", "grad_input"),
    dtype: str = "FP32",
) -> pb.ModelInferRequest:
    rng = np.random.default_rng(seed)
    req = pb.ModelInferRequest(model_name="cross_entropy", model_version="1", id=rid)
    for key, value in (params or {"reduction": "sum", "label_smoothing": 0.1, "timeout": 5000}).items():
        if isinstance(value, str):
            req.parameters[key].string_param = value
        elif isinstance(value, bool):
            req.parameters[key].bool_param = value
        elif isinstance(value, int):
            req.parameters[key].int64_param = value
        else:
            req.parameters[key].double_param = value
    x = rng.standard_normal((rows, 4)).astype(np.float16 if dtype == "FP16" else np.float32)
    t = rng.integers(0, 4, rows).astype(np.int64)
    for name, datatype, value in (("input", dtype, x), ("target", "INT64", t)):
        req.inputs.add(name=name, datatype=datatype, shape=list(value.shape))
        req.raw_input_contents.append(value.tobytes())
    for name in outputs:
        req.outputs.add(name=name)
    return req


def _full(data: bytes, limit: int = LIMIT, shm: SharedMemory | None = None) -> V2Request:
    """The reference: protobuf parses everything, the full decoder decodes it."""
    return v2_grpc.decode_grpc_request(pb.ModelInferRequest.FromString(data), limit, None, shm)


def _wire(data: bytes, limit: int = LIMIT, shm: SharedMemory | None = None) -> V2Request:
    return v2_grpc.decode_wire(v2_grpc.parse_infer_request(data), limit, shm)


def _same(got: V2Request, want: V2Request) -> None:
    assert list(got.tensors) == list(want.tensors)
    for name, t in want.tensors.items():
        assert got.tensors[name].dtype == t.dtype and got.tensors[name].shape == t.shape
        assert torch.equal(got.tensors[name], t)
    assert (got.params, got.outputs, got.binary_output, got.id, got.timeout_s) == (
        want.params,
        want.outputs,
        want.binary_output,
        want.id,
        want.timeout_s,
    )


def _error(call: Any) -> str:
    with pytest.raises(GradservError) as info:
        call()
    return f"{type(info.value).__name__}: {info.value.message}"


def test_second_request_takes_the_plan_and_equals_the_full_decoder(
    cache: HeaderCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = _request("a", seed=1), _request("b", seed=2)  # same header, other id and bytes
    _same(_wire(first.SerializeToString()), _full(first.SerializeToString()))
    wire = v2_grpc.parse_infer_request(second.SerializeToString())
    assert cache.plan(wire.header or b"", LIMIT) is not None

    def refuse(*args: Any, **kwargs: Any) -> V2Request:
        raise AssertionError("the full decoder ran although the header has a plan")

    monkeypatch.setattr(v2_grpc, "decode_grpc_request", refuse)
    got = v2_grpc.decode_wire(wire, LIMIT)
    monkeypatch.undo()
    _same(got, _full(second.SerializeToString()))
    assert got.id == "b"


def test_a_request_with_no_id_has_none() -> None:
    for _ in range(2):
        assert _wire(_request("").SerializeToString()).id is None


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    rows=st.integers(0, 5),
    dtype=st.sampled_from(["FP32", "FP16"]),
    params=st.dictionaries(
        st.sampled_from(["reduction", "label_smoothing", "binary_data_output", "timeout", "extra"]),
        st.one_of(
            st.sampled_from(["mean", "sum", "none"]), st.floats(0, 0.5), st.booleans(), st.integers(0, 10**7)
        ),
        max_size=4,
    ),
    outputs=st.sampled_from([(), ("loss",), ("loss", "grad_input")]),
    ids=st.lists(st.text(max_size=6), min_size=3, max_size=3),
)
def test_plans_equal_the_full_decoder(
    rows: int, dtype: str, params: dict[str, Any], outputs: tuple[str, ...], ids: list[str]
) -> None:
    for i, rid in enumerate(ids):  # the first decodes in full and learns; the others use the plan
        data = _request(rid, rows, i, params, outputs, dtype).SerializeToString()
        _same(_wire(data), _full(data))


def test_raw_entries_that_do_not_fit_the_plan_get_the_full_decoders_error() -> None:
    _wire(_request().SerializeToString())
    short = _request()
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    data = short.SerializeToString()
    assert _error(lambda: _wire(data)) == _error(lambda: _full(data))
    fewer = _request()
    del fewer.raw_input_contents[1]
    data = fewer.SerializeToString()
    assert _error(lambda: _wire(data)) == _error(lambda: _full(data))


def test_a_plan_serves_only_the_element_limit_it_was_checked_against() -> None:
    data = _request(rows=3).SerializeToString()
    _wire(data, LIMIT)
    assert _error(lambda: _wire(data, 8)) == _error(lambda: _full(data, 8))


def test_requests_naming_shared_memory_get_no_plan(cache: HeaderCache, shm_objects: ShmObjects) -> None:
    from gradserve.config import Settings

    shm = SharedMemory(Settings())
    obj = shm_objects(4096)
    shm.register_system("in", obj.key, 0, 4096)
    req = _request()
    req.inputs[1].parameters["shared_memory_region"].string_param = "in"
    req.inputs[1].parameters["shared_memory_byte_size"].int64_param = 24
    del req.raw_input_contents[1]
    data = req.SerializeToString()
    for _ in range(2):
        _same(_wire(data, shm=shm), _full(data, shm=shm))
    wire = v2_grpc.parse_infer_request(data)
    assert cache.plan(wire.header or b"", LIMIT) is None
    # An output written into a region: no plan either.
    out = _request()
    out.outputs[0].parameters["shared_memory_region"].string_param = "in"
    out.outputs[0].parameters["shared_memory_byte_size"].int64_param = 4
    data = out.SerializeToString()
    _wire(data, shm=shm)
    assert cache.plan(v2_grpc.parse_infer_request(data).header or b"", LIMIT) is None


def test_the_cache_is_bounded(cache: HeaderCache) -> None:
    for i in range(cache.capacity + 50):
        _wire(_request(rows=1 + i % 7, params={"reduction": "sum", "extra": i}).SerializeToString())
    assert len(cache) == cache.capacity
    big = _request(params={"reduction": "sum", "extra": "x" * cache.max_header_bytes})
    oldest = v2_grpc.parse_infer_request(
        _request(rows=1, params={"reduction": "sum", "extra": 0}).SerializeToString()
    )
    assert cache.plan(oldest.header or b"", LIMIT) is None  # dropped first
    _wire(big.SerializeToString())
    _wire(big.SerializeToString())
    assert cache.plan(v2_grpc.parse_infer_request(big.SerializeToString()).header or b"", LIMIT) is None


def test_an_id_that_is_not_utf8_is_refused_as_protobuf_refuses_it() -> None:
    from google.protobuf.message import DecodeError

    data = _request("").SerializeToString() + b"\x1a\x02\xff\xfe"  # id (field 3): invalid UTF-8
    with pytest.raises(DecodeError):
        pb.ModelInferRequest.FromString(data)
    with pytest.raises(DecodeError):
        v2_grpc.parse_infer_request(data)


def test_the_last_id_wins_as_in_protobuf() -> None:
    data = _request("first").SerializeToString() + b"\x1a\x04last"
    assert pb.ModelInferRequest.FromString(data).id == "last"
    assert v2_grpc.parse_infer_request(data).id == "last"
    assert _wire(data).id == "last"
