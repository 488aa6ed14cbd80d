"""V2 binary decoding aliases an aligned, writable body and copies otherwise."""

from __future__ import annotations

import orjson
import torch

from gradserve.codecs.v2_rest import decode_rest_request, encode_rest_response
from gradserve.rest.body import BODY_ALIGN


def _body(x: torch.Tensor, pad: int) -> tuple[memoryview, int]:
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.numel() * 4},
                }
            ]
        }
    )
    raw = x.numpy().tobytes()
    buf = bytearray(pad + len(head) + len(raw))
    buf[pad:] = head + raw
    return memoryview(buf)[pad:], len(head)


def _start(view: memoryview) -> int:
    import numpy as np

    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data)


def test_aligned_binary_data_is_not_copied() -> None:
    x = torch.randn(64, 32)
    # Place the body the way read_body does: binary data on an aligned address.
    probe, head_len = _body(x, 0)
    pad = -(_start(probe) + head_len) % BODY_ALIGN
    view, head_len = _body(x, pad)
    req = decode_rest_request(view, str(head_len), 1 << 20, binary_aligned=True)
    t = req.tensors["x"]
    assert torch.equal(t, x)
    assert t.data_ptr() == _start(view[head_len:])


def test_unaligned_or_read_only_data_is_copied_and_correct() -> None:
    x = torch.randn(5, 3)
    probe, head_len = _body(x, 0)
    pad = (-(_start(probe) + head_len) % BODY_ALIGN) + 1  # one byte off
    view, head_len = _body(x, pad)
    # Not known to be aligned: copied (whatever the address), and equal.
    t = decode_rest_request(view, str(head_len), 1 << 20).tensors["x"]
    assert torch.equal(t, x) and t.data_ptr() != _start(view[head_len:])
    ro = bytes(view)
    assert torch.equal(decode_rest_request(ro, str(head_len), 1 << 20).tensors["x"], x)


def test_binary_answer_parts_are_views_of_the_outputs() -> None:
    y = torch.randn(8, 4)
    parts, head_len = encode_rest_response("relu", None, {"y": y}, {"y": True})
    assert head_len == len(parts[0])
    assert isinstance(parts[1], memoryview)
    assert bytes(parts[1]) == y.numpy().tobytes()
