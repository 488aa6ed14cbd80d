"""The native codec and generic validation, without the app."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

from gradserve.codecs.native import decode_tensor, dumps, encode_tensor
from gradserve.errors import InvalidInput, RequestTooLarge
from gradserve.ops import build_registry
from gradserve.validation import Limits, resolve_outputs, validate_params, validate_tensors

REGISTRY = build_registry()
LIMIT = 1 << 20
LIMITS = Limits(LIMIT, 16)


def test_nested_list_defaults() -> None:
    assert decode_tensor("x", [[1, 2]], "float", LIMIT).dtype == torch.float32
    assert decode_tensor("t", [1, 2], "index", LIMIT).dtype == torch.int64
    assert decode_tensor("t", [1, 2], "target", LIMIT).dtype == torch.int64
    assert decode_tensor("t", [0.5, 0.5], "target", LIMIT).dtype == torch.float32
    assert decode_tensor("x", 2.5, "float", LIMIT).shape == ()


def test_index_dtype_needs_integers() -> None:
    with pytest.raises(InvalidInput, match="integer"):
        decode_tensor("t", {"dtype": "int64", "shape": [2], "data": [1.5, 2]}, "index", LIMIT)
    t = decode_tensor("t", {"dtype": "int32", "shape": [2], "data": [1.0, 2]}, "index", LIMIT)
    assert t.dtype == torch.int32 and t.tolist() == [1, 2]


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16", "int64", "int32"])
def test_b64_round_trip_is_exact(dtype: str) -> None:
    t = (torch.arange(-6, 6).reshape(3, 4) * 1.25).to(getattr(torch, dtype))
    raw = base64.b64encode(t.view(torch.uint8).numpy().tobytes()).decode()
    back = decode_tensor("x", {"dtype": dtype, "shape": [3, 4], "b64": raw}, "float", LIMIT)
    assert back.dtype == t.dtype and torch.equal(back, t)


def test_b64_size_checked_before_decoding() -> None:
    huge = "A" * 4000
    with pytest.raises(InvalidInput, match="more than the 8 bytes"):
        decode_tensor("x", {"dtype": "float32", "shape": [2], "b64": huge}, "float", LIMIT)
    short = base64.b64encode(b"\0" * 4).decode()
    with pytest.raises(InvalidInput, match="4 bytes but"):
        decode_tensor("x", {"dtype": "float32", "shape": [2], "b64": short}, "float", LIMIT)


def test_element_cap_before_allocation() -> None:
    with pytest.raises(RequestTooLarge):
        decode_tensor("x", {"shape": [1 << 40], "b64": ""}, "float", LIMIT)
    with pytest.raises(RequestTooLarge):
        decode_tensor("x", [0.0] * 10, "float", 5)


def test_object_form_needs_exactly_one_payload() -> None:
    with pytest.raises(InvalidInput, match="exactly one"):
        decode_tensor("x", {"shape": [1], "data": [1], "b64": "AAAAAA=="}, "float", LIMIT)
    with pytest.raises(InvalidInput, match="unknown key"):
        decode_tensor("x", {"shape": [1], "data": [1], "strides": [1]}, "float", LIMIT)
    with pytest.raises(InvalidInput, match="nested list"):
        decode_tensor("x", True, "float", LIMIT)


def test_encode_keeps_dtype_and_shape() -> None:
    enc = encode_tensor(torch.tensor([[1.5, -2.0]], dtype=torch.bfloat16))
    assert enc["dtype"] == "bfloat16" and enc["shape"] == [1, 2]
    assert dumps(enc) == b'{"dtype":"bfloat16","shape":[1,2],"data":[[1.5,-2.0]]}'
    assert encode_tensor(torch.tensor(3.0, dtype=torch.float64))["data"] == 3.0
    assert encode_tensor(torch.tensor([float("inf")]))["data"] == ["Infinity"]


def test_float32_values_survive_json() -> None:
    t = torch.randn(100)
    enc = encode_tensor(t)
    back = np.asarray(__import__("orjson").loads(dumps(enc))["data"], dtype=np.float32)
    assert np.array_equal(back, t.numpy())


def test_params_defaults_types_and_ranges() -> None:
    spec = REGISTRY.get("softplus")
    assert validate_params(spec, {}, lenient=False, ignore_unknown=False, limits=LIMITS) == {
        "beta": 1.0,
        "threshold": 20.0,
    }
    assert (
        validate_params(spec, {"beta": 2}, lenient=False, ignore_unknown=False, limits=LIMITS)["beta"] == 2.0
    )
    with pytest.raises(InvalidInput, match="'beta'"):
        validate_params(spec, {"beta": 0}, lenient=False, ignore_unknown=False, limits=LIMITS)
    with pytest.raises(InvalidInput, match="'beta'"):
        validate_params(spec, {"beta": True}, lenient=False, ignore_unknown=False, limits=LIMITS)
    with pytest.raises(InvalidInput, match="'beta'"):
        validate_params(spec, {"beta": "2"}, lenient=False, ignore_unknown=False, limits=LIMITS)
    # V2 and gRPC spell numbers as strings at times, and ignore unknown params.
    lenient = validate_params(
        spec, {"beta": "2", "x-trace": 1}, lenient=True, ignore_unknown=True, limits=LIMITS
    )
    assert lenient["beta"] == 2.0


def test_lenient_mode_refuses_near_misses_and_ignores_other_unknowns() -> None:
    # V2 and gRPC ignore params they do not know (clients add their own), but one that
    # is a near miss of the op's own is a typo whose default would be used silently.
    spec = REGISTRY.get("cross_entropy")
    for typo in ("reducton", "Reduction", "REDUCTION", "label_smothing", "ignore_indx"):
        with pytest.raises(InvalidInput, match="did you mean") as info:
            validate_params(spec, {typo: "sum"}, lenient=True, ignore_unknown=True, limits=LIMITS)
        assert repr(typo) in info.value.message
    extras = {"client_tag": "a", "x-trace": 1, "request_priority": 2, "r": 0, "x" * 500: 1}
    params = validate_params(spec, extras, lenient=True, ignore_unknown=True, limits=LIMITS)
    assert params["reduction"] == "mean"
    # Bounded: past the first keys looked at, a typo goes unchecked rather than costing
    # a comparison per key of a huge parameters object.
    many = {f"extra_{i}": i for i in range(10_000)} | {"reducton": "sum"}
    validate_params(spec, many, lenient=True, ignore_unknown=True, limits=LIMITS)


def test_int_param_strings_read_as_json_numbers_do() -> None:
    # The lab's depth, from a plot URL's query or a V2 request: "3.0" is 3 as JSON's
    # 3.0 is; a fraction or a word says an integer is wanted.
    spec = REGISTRY.get("activation_stats")
    for text, depth in (("3", 3), ("3.0", 3), (" 4 ", 4)):
        params = validate_params(spec, {"depth": text}, lenient=True, ignore_unknown=True, limits=LIMITS)
        assert params["depth"] == depth
    for text in ("3.5", "three", "nan"):
        with pytest.raises(InvalidInput, match="'depth': expected an integer"):
            validate_params(spec, {"depth": text}, lenient=True, ignore_unknown=True, limits=LIMITS)


def test_shape_param_string_form() -> None:
    spec = REGISTRY.get("normal")
    params = validate_params(spec, {"shape": "500, 500"}, lenient=True, ignore_unknown=True, limits=LIMITS)
    assert params["shape"] == (500, 500)
    with pytest.raises(InvalidInput, match="'shape'"):
        validate_params(spec, {"shape": "5,x"}, lenient=True, ignore_unknown=True, limits=LIMITS)
    with pytest.raises(RequestTooLarge):
        validate_params(
            spec, {"shape": [1 << 20, 1 << 20]}, lenient=False, ignore_unknown=False, limits=LIMITS
        )


def test_tensors_mixed_float_dtypes_follow_the_primary() -> None:
    spec = REGISTRY.get("mse")
    out = validate_tensors(
        spec,
        {"input": torch.zeros(2, dtype=torch.float64), "target": torch.zeros(2, dtype=torch.float32)},
        limits=LIMITS,
    )
    assert out["target"].dtype == torch.float64


def test_tensors_dtype_kinds() -> None:
    spec = REGISTRY.get("cross_entropy")
    with pytest.raises(InvalidInput, match=r"'input'.*not a float"):
        validate_tensors(
            spec,
            {"input": torch.zeros(2, 3, dtype=torch.int64), "target": torch.zeros(2)},
            limits=LIMITS,
        )
    out = validate_tensors(
        spec, {"input": torch.zeros(2, 3), "target": torch.zeros(2, dtype=torch.int32)}, limits=LIMITS
    )
    assert out["target"].dtype == torch.int64


def test_outputs_resolution() -> None:
    spec = REGISTRY.get("full_loss")
    tensors = {
        "x": torch.zeros(1, 2),
        "weight": torch.zeros(3, 2),
        "target": torch.zeros(1, dtype=torch.int64),
    }
    assert resolve_outputs(spec, tensors, None, grad=False) == ("loss", "data_loss", "reg_loss", "scores")
    assert "grad_bias" not in resolve_outputs(spec, tensors, None, grad=True)
    with pytest.raises(InvalidInput, match="needs input 'bias'"):
        resolve_outputs(spec, tensors, ["grad_bias"], grad=False)
    with pytest.raises(InvalidInput, match="unknown output"):
        resolve_outputs(spec, tensors, ["grad_target"], grad=False)
    assert resolve_outputs(spec, tensors, ["grad_x", "loss"], grad=False) == ("grad_x", "loss")
