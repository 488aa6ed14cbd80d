"""Batch layout: padding, splitting back, and the no-copy path for large requests."""

from __future__ import annotations

import torch

from gradserve.ops import build_registry
from gradserve.ops.layout import ELEMENT_ALIGN, assemble, disassemble

REGISTRY = build_registry()


def test_elementwise_requests_are_padded_and_split_back() -> None:
    spec = REGISTRY.get("sigmoid")
    reqs = [{"x": torch.randn(3, 5)}, {"x": torch.randn(70)}, {"x": torch.randn(())}]
    batch = assemble(spec, reqs, {}, frozenset({"y"}))
    assert batch.rows == (ELEMENT_ALIGN, 2 * ELEMENT_ALIGN, ELEMENT_ALIGN)
    assert batch.tensors["x"].numel() == sum(batch.rows)
    outs = disassemble(spec, spec.run(batch), reqs)
    for req, out in zip(reqs, outs, strict=True):
        assert out["y"].shape == req["x"].shape
        # Close, not bitwise: torch's own unpadded call rounds its scalar tail differently.
        torch.testing.assert_close(out["y"], torch.sigmoid(req["x"]))


def test_large_lone_request_is_not_copied() -> None:
    spec = REGISTRY.get("relu")
    x = torch.randn(40, 3)
    batch = assemble(spec, [{"x": x}], {}, frozenset({"y"}), unpadded_above=100)
    assert batch.tensors["x"].data_ptr() == x.data_ptr()
    assert batch.rows == (120,)
    [out] = disassemble(spec, spec.run(batch), [{"x": x}])
    assert torch.equal(out["y"], x.clamp(min=0))
    # Below the limit the same request is padded, as it could share a batch.
    small = assemble(spec, [{"x": x}], {}, frozenset({"y"}), unpadded_above=1000)
    assert small.rows == (128,)


def test_rows_requests_concatenate_and_scalars_stack() -> None:
    spec = REGISTRY.get("mse")
    reqs = [
        {"input": torch.randn(2, 3), "target": torch.randn(2, 3), "grad_loss": torch.tensor(2.0)},
        {"input": torch.randn(4, 3), "target": torch.randn(4, 3), "grad_loss": torch.tensor(3.0)},
    ]
    batch = assemble(spec, reqs, {"reduction": "mean"}, frozenset({"loss", "grad_input"}))
    assert batch.rows == (2, 4)
    assert batch.tensors["input"].shape == (6, 3)
    assert batch.tensors["grad_loss"].tolist() == [2.0, 3.0]
