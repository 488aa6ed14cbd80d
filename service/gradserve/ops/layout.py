"""Batch layout: how requests' tensors are joined into one kernel call and split back.

The engine always goes through ``assemble`` -> ``OpSpec.run`` -> ``disassemble``, for a
lone request as for a batch of many, so a request takes the same numeric path whoever
shares its batch (API.md's batch-invariance rule).

- ``rows`` ops: per-row tensors are concatenated along dim 0; 0-d per-row tensors (the
  upstream gradient of a reduced loss) are stacked into a ``[len(rows)]`` vector. A
  lone request's tensors pass through unchanged.
- ``elementwise`` ops: per-row tensors are flattened, each request padded with zeros
  to a multiple of ``ELEMENT_ALIGN`` elements, and concatenated. Padding matters:
  torch's vectorized CPU kernels compute the last ``n % vector_width`` elements with
  scalar code whose rounding can differ by an ulp, so without it an element's bits
  would depend on where it lands in the buffer. With every request aligned and padded,
  each element is always computed by the vector body.
- ``solo`` ops: one request, tensors as they are.
Tensors that are not per-row (shared weights) are taken from the first request; the
batcher only groups requests whose shared tensors are absent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from gradserve.ops.registry import Batch, OpSpec

# Two AVX-512 vectors of float64 is 16 elements; of float32, 32. 64 covers both with
# room to spare and costs little on small requests.
ELEMENT_ALIGN = 64


def _padded(n: int) -> int:
    return -(-n // ELEMENT_ALIGN) * ELEMENT_ALIGN


def _pad_cat(tensors: Sequence[torch.Tensor], sizes: Sequence[int]) -> torch.Tensor:
    """Flatten, pad each to its size and concatenate: one allocation, one copy each."""
    out = tensors[0].new_zeros(sum(sizes))
    offset = 0
    for t, size in zip(tensors, sizes, strict=True):
        out[offset : offset + t.numel()] = t.reshape(-1)
        offset += size
    return out


def assemble(
    spec: OpSpec,
    requests: Sequence[Mapping[str, torch.Tensor]],
    params: Mapping[str, Any],
    want: frozenset[str],
    *,
    unpadded_above: int | None = None,
) -> Batch:
    """Join the tensors of one or more requests that share op, params and outputs.

    ``unpadded_above``: a lone elementwise request with more elements than this is
    never batched (the batcher's large-request rule), so it skips the padding copy.
    """
    first = requests[0]
    if spec.batch_mode == "solo":
        if len(requests) != 1:
            raise ValueError(f"op {spec.name} is solo; got {len(requests)} requests")
        lead = first.get(spec.inputs[0].name) if spec.inputs else None
        solo_rows = lead.shape[0] if lead is not None and lead.dim() > 0 else 1
        return Batch(dict(first), params, want, (solo_rows,))

    tensors: dict[str, torch.Tensor] = {}
    if spec.batch_mode == "elementwise":
        primary = spec.inputs[0].name
        numel = first[primary].numel()
        if len(requests) == 1 and unpadded_above is not None and numel > unpadded_above:
            flat = {name: t.reshape(-1) for name, t in first.items()}
            return Batch(flat, params, want, (numel,))
        rows: tuple[int, ...] = tuple(_padded(r[primary].numel()) for r in requests)
        for name in first:
            if spec.input_index.get(name) is None or spec.input_index[name].per_row:
                tensors[name] = _pad_cat([r[name] for r in requests], rows)
            else:
                tensors[name] = first[name]
        return Batch(tensors, params, want, rows)

    primary = spec.inputs[0].name
    # A 0-d primary input never shares a batch (the batcher keeps it alone): one row.
    rows = tuple(r[primary].shape[0] if r[primary].dim() else 1 for r in requests)
    if len(requests) == 1:
        # A lone request keeps its tensors as they are (a 0-d input stays 0-d, so its
        # outputs keep their shapes); kernels accept a 0-d or [1] upstream gradient.
        return Batch(dict(first), params, want, rows)
    for name in first:
        tspec = spec.input_index.get(name)
        if tspec is not None and not tspec.per_row:
            tensors[name] = first[name]
        elif first[name].dim() == 0:
            tensors[name] = torch.stack([r[name] for r in requests])
        else:
            tensors[name] = torch.cat([r[name] for r in requests])
    return Batch(tensors, params, want, rows)


def disassemble(
    spec: OpSpec,
    outputs: list[dict[str, torch.Tensor]],
    requests: Sequence[Mapping[str, torch.Tensor]],
) -> list[dict[str, torch.Tensor]]:
    """Undo ``assemble``'s padding: give each request outputs of its own shapes."""
    if spec.batch_mode != "elementwise":
        return outputs
    result = []
    for out, req in zip(outputs, requests, strict=True):
        fixed = {}
        for name, t in out.items():
            # Output grad_<input> has that input's shape; y has x's shape.
            source = req.get(name.removeprefix("grad_"), req[spec.inputs[0].name])
            fixed[name] = t[: source.numel()].reshape(source.shape)
        result.append(fixed)
    return result
