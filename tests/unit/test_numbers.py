"""codecs/numbers.py: JSON numbers and shapes with bounded costs (issue 8)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest
import torch

from gradserve.codecs.numbers import (
    MAX_STRING_CHARS,
    check_json_answer,
    check_shape_size,
    json_array,
    nonfinite_literal_hint,
    spanned_elements,
    to_torch,
)
from gradserve.errors import InvalidInput, RequestTooLarge


def parse(values: Any, strings: bool = True) -> np.ndarray:
    return json_array("input 'x'", values, strings=strings, max_elements=1 << 20)


def test_spanned_elements_counts_zero_dims_as_one() -> None:
    assert spanned_elements([]) == 1
    assert spanned_elements([3, 4]) == 12
    assert spanned_elements([10**9, 0]) == 10**9
    assert spanned_elements([0, 0, 5]) == 5


@pytest.mark.parametrize(
    "shape,needle",
    [
        ([1] * 17, "17 dimensions"),
        ([4096, 4097], "elements"),
        ([0, 2**63 - 1], "zero dimension"),
        ([2**40, 0], "zero"),
    ],
)
def test_check_shape_size_refuses(shape: list[int], needle: str) -> None:
    with pytest.raises(RequestTooLarge, match=needle):
        check_shape_size("input 'x'", shape, 1 << 24, max_dims=16)


def test_check_shape_size_counts() -> None:
    assert check_shape_size("x", [3, 0, 7], 100) == 0
    assert check_shape_size("x", [], 1) == 1


def test_ints_stay_ints_and_floats_become_float64() -> None:
    assert parse([1, 2, 3]).dtype == np.int64
    assert parse([1, 2.5]).dtype == np.float64
    assert parse(7).shape == ()
    assert parse([[1.0, 2.0], [3.0, 4.0]]).shape == (2, 2)
    assert parse([]).shape == (0,)


def test_non_finite_spellings_and_short_numeric_strings() -> None:
    out = parse(["NaN", "Infinity", "-Infinity", "inf", "-inf", "2.5"])
    assert math.isnan(out[0]) and list(out[1:]) == [math.inf, -math.inf, math.inf, -math.inf, 2.5]


@pytest.mark.parametrize(
    "values,needle",
    [
        ([True, 1.0], "true"),
        ([None], "null"),
        ([{"a": 1}], "object"),
        (["abc"], "'abc'"),
        (["9" * (MAX_STRING_CHARS + 1)], "characters"),
        ("x" * 10**6, "characters"),
        ([2**64], "int64"),
        ([float("1e308"), 10**400], "float64"),
        (None, "null"),
    ],
)
def test_refusals_name_the_input(values: Any, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle) as info:
        parse(values)
    assert "input 'x'" in info.value.message
    assert len(info.value.message) < 300


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("1e400", "beyond the float64 range"),  # finite as written: never a silent inf
        ("1_000", "'1_000'"),  # Python's float() takes these; no JSON number is written so
        (" 3 ", "' 3 '"),
        ("\uff12", "'\uff12'"),  # a full-width 2
        ("0x10", "'0x10'"),
    ],
)
def test_numbers_as_strings_follow_json_number_syntax(text: str, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        parse([text])
    assert parse(["-1.5e3", "+2", ".5", "7."]).tolist() == [-1500.0, 2.0, 0.5, 7.0]


def test_strings_refused_where_not_allowed() -> None:
    with pytest.raises(InvalidInput):
        parse(["NaN"], strings=False)


def test_ragged_and_too_deep() -> None:
    with pytest.raises(InvalidInput, match="ragged"):
        parse([[1, 2], [3]])
    with pytest.raises(InvalidInput, match="ragged"):
        json_array("x", [[1, 2], 3], strings=True, max_elements=None)
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    with pytest.raises(RequestTooLarge, match="64"):
        parse(deep)


def test_many_long_strings_never_build_a_unicode_array() -> None:
    # np.asarray would allocate 200,000 x 100,000 x 4 bytes (80 GB) for this.
    values = ["1" * 100_000] + ["a"] * 200_000
    with pytest.raises(InvalidInput, match="100000 characters"):
        parse(values)


def test_to_torch_ranges() -> None:
    assert to_torch("x", np.array([1e300]), torch.float64).item() == 1e300
    with pytest.raises(InvalidInput, match="float32"):
        to_torch("x", np.array([1e300]), torch.float32)
    with pytest.raises(InvalidInput, match="float16"):
        to_torch("x", np.array([70000.0]), torch.float16)
    # Non-finite inputs stay non-finite: only finite values that overflow are refused.
    assert torch.isinf(to_torch("x", np.array([math.inf]), torch.float16)).all()
    with pytest.raises(InvalidInput, match="int32"):
        to_torch("x", np.array([2**31]), torch.int32)
    with pytest.raises(InvalidInput, match="integer values"):
        to_torch("x", np.array([1.5]), torch.int64)
    assert to_torch("x", np.array([3.0]), torch.int64).dtype == torch.int64
    # 2**63 as a float: int64's top (2**63 - 1) rounds to it in float64, and the cast
    # used to wrap it to -2**63 (an ignore_index of -2**63 then dropped the row).
    with pytest.raises(InvalidInput, match="int64"):
        to_torch("x", np.array([9.223372036854776e18, 0.0]), torch.int64)
    assert to_torch("x", np.array([-9.223372036854776e18]), torch.int64).item() == -(2**63)
    assert to_torch("x", np.array([], dtype=np.float64), torch.int64).numel() == 0
    assert to_torch("x", np.array(2.0), torch.float32).shape == ()


def test_check_json_answer() -> None:
    assert check_json_answer([torch.zeros(3, 4), torch.zeros(())], 13) == 13
    with pytest.raises(RequestTooLarge, match="binary"):
        check_json_answer([torch.zeros(100, 0)], 99)


@pytest.mark.parametrize(
    ("body", "hinted"),
    [
        (b'{"x": [NaN]}', True),
        (b'{"x": [1, Infinity]}', True),
        (b'{"x": [-Infinity]}', True),
        (b'{"x": [nan, 1]}', True),
        (b'{"x": [-inf]}', True),
        (b'{"x": [1, 2', False),
        (b"{nope", False),
        (b'{"x": [None]}', False),
    ],
)
def test_nonfinite_literal_hint(body: bytes, hinted: bool) -> None:
    with pytest.raises(orjson.JSONDecodeError) as info:
        orjson.loads(body)
    hint = nonfinite_literal_hint(body, info.value.pos)
    assert bool(hint) is hinted, (body, info.value)
    assert nonfinite_literal_hint(body, -1) == ""
