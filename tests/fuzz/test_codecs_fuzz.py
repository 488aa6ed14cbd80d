"""Property tests of every codec (issue 8, item 1): whatever the bytes or JSON values,
a codec returns a result or raises a documented gradserve error with a 4xx status;
never another exception type, never a 5xx.

In-process: native tensors (codecs/native.py decode_tensor), V2 REST JSON and binary
(codecs/v2.py decode_rest_request, plus engine_inputs), gRPC ModelInfer (the
hand-written deserializer codecs/v2_grpc.py parse_infer_request, then
decode_grpc_request). Through a real server: gzip/deflate bodies on the V2 route.
Every test is derandomized with no example database, so a run is reproducible.
"""

from __future__ import annotations

import base64
import gzip
import math
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import orjson
import pytest
import torch
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from gradserve.codecs import v2, v2_rest, v2_tensors
from gradserve.codecs.native import decode_tensor
from gradserve.codecs.v2_grpc import decode_wire, parse_infer_request
from gradserve.errors import GradservError
from gradserve.grpc.generated import inference_pb2 as pb
from gradserve.ops import build_registry
from tests.conftest import ServerProcess
from tests.fuzz._support import Deep, RssWatch, log_excerpt, materialize, to_json

T = TypeVar("T")
REGISTRY = build_registry()
SPECS = list(REGISTRY)
COUNTS: dict[str, int] = {}


def fuzz_settings(max_examples: int) -> Callable[[T], T]:
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


def documented(call: Callable[[], T], transport: str) -> T | GradservError:
    """Run ``call``; a GradservError must be a documented 4xx; anything else propagates."""
    COUNTS[transport] = COUNTS.get(transport, 0) + 1
    try:
        return call()
    except GradservError as exc:
        assert 400 <= exc.http_status < 500, f"{type(exc).__name__} {exc.http_status}: {exc.message}"
        assert isinstance(exc.message, str) and exc.message
        return exc


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Any:
    yield
    print("\ncodec fuzz cases: " + ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items())))


# ---------------------------------------------------------------- shared strategies

BIG_INTS = [0, 1, 2, 3, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64, 2**70, 10**30]
dims = st.one_of(
    st.integers(0, 4),
    st.sampled_from(BIG_INTS),
    st.integers(-(2**64), -1),
)
shapes = st.one_of(
    st.lists(dims, max_size=6),
    st.lists(st.integers(0, 2), min_size=60, max_size=70),  # around numpy's 64-dim limit
    st.lists(st.sampled_from([0, 1, 2**62]), min_size=2, max_size=4),  # zero beside huge
    st.lists(st.one_of(st.booleans(), st.floats(), st.text(max_size=3), st.none()), max_size=3),
    st.just([0, 2**62]),
    st.just([2**31, 0]),
    st.just([1] * 65),
)
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 2**200]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e300, -1e300, 3.5e38, 65505.0, 1e-320, -0.0, 5e-324]),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "inf", "nan", "1e5", "", "x", "\x00"]),
    st.booleans(),
    st.none(),
)
json_scalars = st.one_of(numbers, st.text(max_size=8))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


def deep(leaf: st.SearchStrategy[Any] = numbers) -> st.SearchStrategy[Deep]:
    depth = st.one_of(st.integers(60, 70), st.sampled_from([200, 1000, 1023, 1024, 1100]))
    return st.builds(Deep, depth, leaf)


@st.composite
def nested_lists(draw: st.DrawFn) -> Any:
    """Rectangular or ragged nested lists of numbers (or junk)."""
    shape = draw(st.lists(st.integers(0, 3), max_size=4))
    leaf = draw(st.sampled_from(["int", "float", "mixed"]))
    elements = {
        "int": st.integers(-(2**65), 2**65),
        "float": st.floats(allow_nan=True, allow_infinity=True),
        "mixed": numbers,
    }[leaf]

    def build(dims_left: list[int]) -> Any:
        if not dims_left:
            return draw(elements)
        n = dims_left[0]
        if draw(st.integers(0, 9)) == 0:  # ragged now and then
            n = draw(st.integers(0, 3))
        return [build(dims_left[1:]) for _ in range(n)]

    return build(shape)


# ---------------------------------------------------------------- native tensors

NATIVE_DTYPES = ["float32", "float64", "float16", "bfloat16", "int64", "int32"]
dtype_names = st.one_of(
    st.sampled_from(NATIVE_DTYPES),
    st.sampled_from(["FP32", "bool", "uint8", "int8", "complex64", "", "float", "Float32"]),
    st.integers(),
    st.none(),
)


@st.composite
def native_objects(draw: st.DrawFn) -> dict[str, Any]:
    """{dtype, shape, data|b64} with lies: data lengths and b64 sizes that disagree."""
    shape = draw(shapes)
    obj: dict[str, Any] = {"shape": shape}
    if draw(st.booleans()):
        obj["dtype"] = draw(dtype_names)
    try:
        count = math.prod(shape) if all(isinstance(d, int) for d in shape) else 3
    except TypeError:
        count = 3
    count = min(max(count, 0), 64)
    lie = draw(st.sampled_from([0, 0, 0, -1, 1, 7]))
    if draw(st.booleans()):
        n = max(0, count + lie)
        obj["data"] = draw(
            st.one_of(
                st.lists(numbers, min_size=n, max_size=n),
                st.lists(st.floats(), min_size=n, max_size=n),
                json_values,
                deep(),
            )
        )
    else:
        itemsize = draw(st.sampled_from([1, 2, 4, 8]))
        raw = draw(
            st.binary(min_size=max(0, count * itemsize + lie), max_size=max(0, count * itemsize + lie))
        )
        text = base64.b64encode(raw).decode()
        obj["b64"] = draw(
            st.one_of(
                st.just(text),
                st.just(text + "="),
                st.just(text[:-1]),
                st.just(" " + text),
                st.text(max_size=20),
                st.just("A" * 10_000),
                st.integers(),
            )
        )
    if draw(st.integers(0, 20)) == 0:
        obj[draw(st.text(max_size=4))] = draw(json_scalars)
    if draw(st.integers(0, 20)) == 0:
        obj["data"] = [1.0]  # both data and b64, or data beside a lying shape
    return obj


native_values = st.one_of(
    nested_lists(),
    native_objects(),
    deep(),
    json_values,
    st.text(max_size=50),
    st.just("x" * 100_000),
)
kinds = st.sampled_from(["float", "index", "target", "int"])
limits = st.sampled_from([16 * 2**20, 1000, 1])


@fuzz_settings(1500)
@given(value=native_values, kind=kinds, max_elements=limits)
def test_native_decode_tensor(value: Any, kind: Any, max_elements: int) -> None:
    result = documented(lambda: decode_tensor("x", materialize(value), kind, max_elements), "native")
    if isinstance(result, torch.Tensor):
        assert result.numel() <= max_elements
        assert result.dim() <= 64


# ---------------------------------------------------------------- V2 REST JSON and binary

V2_DATATYPES = list(v2_tensors.V2_ITEMSIZE)
v2_datatypes = st.one_of(
    st.sampled_from(V2_DATATYPES),
    st.sampled_from(["fp32", "FLOAT32", "", "STRING"]),
    st.integers(),
    st.none(),
)
params_values = st.one_of(
    json_values, deep(json_scalars), st.sampled_from([1e300, 2**70, -(2**70), "1,2", ""])
)
# Inference-Header-Content-Length values beyond plain digits: Unicode digits that
# str.isdigit() accepts but int() may not (superscripts), Arabic-Indic digits, signs.
HEADER_LIES = [
    "١",
    "²",
    "٣٢",
    "𝟙𝟚",
    "¹²³",
    "+5",
    "-1",
    " 7 ",
    "0x10",
    "1e3",
    "",
    " ",
    "٠",
    "99999999999999999999",
]


@st.composite
def v2_inputs(draw: st.DrawFn, binary: bool) -> tuple[dict[str, Any], bytes]:
    datatype = draw(v2_datatypes)
    shape = draw(shapes)
    itemsize = v2_tensors.V2_ITEMSIZE.get(datatype, 4) if isinstance(datatype, str) else 4
    itemsize = itemsize or 1
    try:
        count = min(max(math.prod(shape), 0), 64) if all(isinstance(d, int) for d in shape) else 2
    except TypeError:
        count = 2
    item: dict[str, Any] = {
        "name": draw(
            st.one_of(
                st.sampled_from(["x", "input", "target", "shape", "weight", "grad_y"]), st.text(max_size=4)
            )
        ),
        "datatype": datatype,
        "shape": shape,
    }
    blob = b""
    if binary and draw(st.integers(0, 5)) > 0:
        size = count * itemsize + draw(st.sampled_from([0, 0, 0, 1, -1, 8, 2**40]))
        item["parameters"] = {
            "binary_data_size": draw(
                st.one_of(st.just(size), st.just(str(size)), st.just(-1), st.floats(), st.just(2**64))
            )
        }
        blob = draw(st.binary(min_size=max(0, min(size, 600)), max_size=max(0, min(size, 600))))
        if draw(st.integers(0, 8)) == 0:
            item["data"] = [1.0]
    elif draw(st.integers(0, 10)) > 0:
        n = count + draw(st.sampled_from([0, 0, 0, 1, -1]))
        item["data"] = draw(
            st.one_of(
                st.lists(numbers, min_size=max(n, 0), max_size=max(n, 0)), nested_lists(), json_values, deep()
            )
        )
    if draw(st.integers(0, 15)) == 0:
        item.setdefault("parameters", {})[
            draw(st.sampled_from(["shared_memory_region", "classification", "x"]))
        ] = 1
    return item, blob


@st.composite
def v2_documents(draw: st.DrawFn, binary: bool) -> tuple[dict[str, Any], bytes]:
    pairs = draw(st.lists(v2_inputs(binary), max_size=4))
    doc: dict[str, Any] = {"inputs": [p[0] for p in pairs]}
    if draw(st.booleans()):
        doc["parameters"] = draw(
            st.dictionaries(
                st.sampled_from(
                    [
                        "binary_data_output",
                        "timeout",
                        "shape",
                        "reduction",
                        "negative_slope",
                        "ignore_index",
                        "dim",
                        "seed",
                        "triton_x",
                        "z",
                    ]
                ),
                params_values,
                max_size=4,
            )
        )
    if draw(st.booleans()):
        doc["outputs"] = draw(
            st.one_of(
                st.lists(
                    st.fixed_dictionaries(
                        {"name": st.text(max_size=6)},
                        optional={
                            "parameters": st.dictionaries(
                                st.sampled_from(["binary_data", "classification"]), json_scalars, max_size=2
                            )
                        },
                    ),
                    max_size=3,
                ),
                json_values,
            )
        )
    if draw(st.integers(0, 6)) == 0:
        doc["id"] = draw(json_scalars)
    if draw(st.integers(0, 10)) == 0:
        doc["inputs"] = draw(json_values)
    return doc, b"".join(p[1] for p in pairs)


def _decode_then_engine_inputs(body: bytes, header: str | None, spec_index: int) -> Any:
    req = v2_rest.decode_rest_request(body, header, 16 * 2**20)
    return v2.engine_inputs(SPECS[spec_index % len(SPECS)], req)


@fuzz_settings(800)
@given(
    doc=v2_documents(binary=False),
    raw=st.one_of(st.none(), st.binary(max_size=40)),
    spec_index=st.integers(0, 100),
)
def test_v2_json_decode(doc: tuple[dict[str, Any], bytes], raw: bytes | None, spec_index: int) -> None:
    body = raw if raw is not None and spec_index % 5 == 0 else to_json(doc[0])
    documented(lambda: _decode_then_engine_inputs(body, None, spec_index), "v2_json")


@fuzz_settings(800)
@given(
    doc=v2_documents(binary=True),
    header_mode=st.sampled_from(["exact", "exact", "exact", "off", "lie"]),
    offset=st.integers(-3, 3),
    lie=st.sampled_from(HEADER_LIES),
    tail=st.sampled_from(["none", "none", "truncate", "trailing"]),
    spec_index=st.integers(0, 100),
)
def test_v2_binary_decode(
    doc: tuple[dict[str, Any], bytes], header_mode: str, offset: int, lie: str, tail: str, spec_index: int
) -> None:
    head = to_json(doc[0])
    blob = doc[1]
    if tail == "truncate":
        blob = blob[: len(blob) // 2]
    elif tail == "trailing":
        blob += b"\x00\x01trailing"
    body = head + blob
    header = {"exact": str(len(head)), "off": str(len(head) + offset), "lie": lie}[header_mode]
    documented(lambda: _decode_then_engine_inputs(body, header, spec_index), "v2_binary")


# ---------------------------------------------------------------- gRPC ModelInfer


@st.composite
def grpc_requests(draw: st.DrawFn) -> bytes:
    """A ModelInferRequest with raw contents that may disagree with shapes, then
    optionally damaged at the byte level (the hand-written deserializer's framing)."""
    msg = pb.ModelInferRequest(model_name=draw(st.sampled_from(["relu", "mse", "normal", "x"])))
    raws: list[bytes] = []
    for _ in range(draw(st.integers(0, 3))):
        t = msg.inputs.add()
        t.name = draw(st.sampled_from(["x", "input", "target", "shape", "grad_y", ""]))
        t.datatype = draw(st.one_of(st.sampled_from(V2_DATATYPES), st.text(max_size=4)))
        shape = draw(
            st.lists(
                st.one_of(st.integers(0, 4), st.sampled_from([2**31, 2**62, 2**63 - 1, -1, -(2**63)])),
                max_size=5,
            )
        )
        t.shape.extend(shape)
        itemsize = v2_tensors.V2_ITEMSIZE.get(t.datatype) or 4
        try:
            count = min(max(math.prod(shape), 0), 64)
        except OverflowError:
            count = 1
        if draw(st.integers(0, 4)) == 0:
            t.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=count + 1)))
        else:
            n = count * itemsize + draw(st.sampled_from([0, 0, 0, 1, -1, 3]))
            raws.append(draw(st.binary(min_size=max(n, 0), max_size=max(n, 0))))
    if draw(st.integers(0, 5)) == 0:
        raws.append(b"extra")
    msg.raw_input_contents.extend(raws)
    for key in draw(
        st.lists(
            st.sampled_from(
                ["reduction", "negative_slope", "shape", "ignore_index", "binary_data_output", "timeout"]
            ),
            max_size=3,
        )
    ):
        p = msg.parameters[key]
        which = draw(st.sampled_from(["int64", "double", "string", "bool", "uint64"]))
        if which == "int64":
            p.int64_param = draw(st.integers(-(2**63), 2**63 - 1))
        elif which == "uint64":
            p.uint64_param = draw(st.integers(0, 2**64 - 1))
        elif which == "double":
            p.double_param = draw(st.floats())
        elif which == "string":
            p.string_param = draw(st.sampled_from(["mean", "3,4", "0,4611686018427387904", "1e300", "", "١"]))
        else:
            p.bool_param = draw(st.booleans())
    for name in draw(st.lists(st.text(max_size=4), max_size=2)):
        msg.outputs.add().name = name
    data = msg.SerializeToString()
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip", "append", "varint"]))
    if damage == "truncate" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
    elif damage == "append":
        data += draw(st.binary(max_size=12))
    elif damage == "varint":  # raw_input_contents (field 7) with a 10-byte length of 2^63
        data += b"\x3a" + b"\xff" * 9 + b"\x01"
    return data


def _parse_and_decode(data: bytes) -> Any:
    try:
        wire = parse_infer_request(data)
    except DecodeError:
        return None  # the guard turns this into INVALID_ARGUMENT (tested live)
    req = decode_wire(wire, 16 * 2**20)
    spec = REGISTRY.get(wire.message.model_name) if wire.message.model_name in REGISTRY else SPECS[0]
    return v2.engine_inputs(spec, req)


@fuzz_settings(800)
@given(data=st.one_of(grpc_requests(), st.binary(max_size=64)))
def test_grpc_infer_decode(data: bytes) -> None:
    documented(lambda: _parse_and_decode(data), "grpc")


@fuzz_settings(200)
@given(data=grpc_requests())
def test_grpc_deserializer_agrees_with_protobuf(data: bytes) -> None:
    """The hand-written framing splits exactly what protobuf would parse."""
    try:
        reference = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        with pytest.raises(DecodeError):
            parse_infer_request(data)
        return
    wire = parse_infer_request(data)
    merged = pb.ModelInferRequest()
    merged.CopyFrom(wire.message)
    if wire.raw:
        del merged.raw_input_contents[:]
        merged.raw_input_contents.extend(bytes(r) for r in wire.raw)
    merged.id = wire.id
    assert merged == reference


# ---------------------------------------------------------------- gzip through the real V2 route


def _gzip_bomb(inflated: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\x00" * (1 << 20)
    parts = [c.compress(chunk) for _ in range(inflated >> 20)]
    return b"".join(parts) + c.flush()


BINARY_HEAD = orjson.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}]}
)
VALID_BODY = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [-1.0, 2.0]}]})


@pytest.mark.timeout(120)
def test_gzip_through_v2_route(fuzz_server: tuple[ServerProcess, RssWatch]) -> None:
    """Bombs, trailing members, truncation, wrong encodings: a 4xx or a correct 200."""
    server, watch = fuzz_server
    url = f"{server.url}/v2/models/relu/infer"
    bomb = _gzip_bomb(256 << 20)  # 256 MiB of zeros in ~250 KiB
    good = gzip.compress(VALID_BODY)
    deflated = zlib.compress(VALID_BODY)
    cases: list[tuple[str, bytes, dict[str, str], set[int]]] = [
        ("plain gzip", good, {"Content-Encoding": "gzip"}, {200}),
        ("deflate", deflated, {"Content-Encoding": "deflate"}, {200}),
        ("bomb 256 MiB", bomb, {"Content-Encoding": "gzip"}, {413}),
        ("bomb as deflate", bomb, {"Content-Encoding": "deflate"}, {400, 413}),
        ("trailing gzip member", good + gzip.compress(b'{"junk": 1}'), {"Content-Encoding": "gzip"}, {400}),
        ("trailing garbage", good + b"garbage", {"Content-Encoding": "gzip"}, {400}),
        ("trailing bomb member", good + bomb, {"Content-Encoding": "gzip"}, {400, 413}),
        ("truncated", good[:-5], {"Content-Encoding": "gzip"}, {400}),
        ("not gzip", VALID_BODY, {"Content-Encoding": "gzip"}, {400}),
        ("br", good, {"Content-Encoding": "br"}, {400, 415}),
        ("gzip, gzip", gzip.compress(good), {"Content-Encoding": "gzip, gzip"}, {200, 400, 415}),
        ("empty gzip", gzip.compress(b""), {"Content-Encoding": "gzip"}, {400}),
        ("empty body", b"", {"Content-Encoding": "gzip"}, {400}),
        (
            "binary + gzip",
            gzip.compress(BINARY_HEAD + struct.pack("<2f", -1, 2)),
            {"Content-Encoding": "gzip", "Inference-Header-Content-Length": str(len(BINARY_HEAD))},
            {200},
        ),
    ]
    failures: list[str] = []
    with httpx.Client(timeout=30) as client:
        for name, body, headers, allowed in cases:
            t0 = time.monotonic()
            r = client.post(url, content=body, headers=headers)
            took = time.monotonic() - t0
            COUNTS["v2_gzip_http"] = COUNTS.get("v2_gzip_http", 0) + 1
            ok = r.status_code in allowed
            if r.status_code == 200:
                out = (
                    r.json()["outputs"][0]["data"]
                    if not r.headers.get("inference-header-content-length")
                    else None
                )
                ok = ok and (out is None or out == [0.0, 2.0])
            if not ok:
                failures.append(
                    f"{name}: {r.status_code} {r.content[:200]!r} (allowed {sorted(allowed)}), {took:.2f} s"
                )
        assert client.get(f"{server.url}/healthz").status_code == 200
    print(f"\ngzip cases: {len(cases)}; {watch.summary()}")
    assert watch.peak < watch.baseline + 1024 * 2**20, watch.summary()
    assert not failures, "\n".join(failures) + "\n" + log_excerpt(server)
