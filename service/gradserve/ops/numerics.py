"""Numeric helpers shared by the kernels: dtype promotion for low precision."""

from __future__ import annotations

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 are computed in float32 and cast back, as autocast would do
    for losses: their own CPU kernels lose too much in reductions and exp/log."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def upcast(t: torch.Tensor) -> torch.Tensor:
    return t.to(compute_dtype(t.dtype)) if t.is_floating_point() else t
