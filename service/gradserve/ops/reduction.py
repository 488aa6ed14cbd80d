"""The loss runner: one batch of per-element losses -> each request's loss and grad_input.

Flow position: every loss kernel (ops/losses.py, built by ``reduction_kernel``) is this
runner around the op's elements function (ops/loss_elements.py); the executor calls it
on a ``Batch`` built by ``layout.assemble`` (batch_mode "rows": requests concatenated
along dim 0). It reduces per request (per segment of rows) with sums that do not depend
on what else shares the batch, and gets ``grad_input`` from ONE autograd call on the
per-element losses (the scheme is described in ops/losses.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gradserve.ops.numerics import upcast
from gradserve.ops.registry import Batch, Kernel, Outputs, OutputSpec, Params, TensorSpec, split_rows

Tensor = torch.Tensor

LOSS = OutputSpec("loss", "The loss: [] for mean/sum/batchmean, per element for none.")
GRAD_INPUT = OutputSpec("grad_input", "Vector-Jacobian product wrt input (its shape).")
GRAD_LOSS = TensorSpec(
    "grad_loss",
    "float",
    "Upstream gradient with loss's shape (all ones when absent).",
    optional=True,
)


@dataclass(frozen=True)
class Elements:
    """An op's per-element losses for a whole batch and its per-request divisors."""

    # What reduction="none" answers, for all requests at once; dim 0 is the row dim
    # (0-d for a 0-d input, which is never batched).
    values: Tensor
    # [len(rows)]: the divisor of each request's sum for "mean" (or "batchmean").
    denoms: Tensor


# (input in compute precision, maybe requiring grad; every batch tensor in compute
# precision; params; rows) -> Elements
ElementFn = Callable[[Tensor, dict[str, Tensor], Params, tuple[int, ...]], Elements]


def segment_sizes(values: Tensor, rows: tuple[int, ...]) -> list[int]:
    """How many of ``values``' elements (flattened) belong to each request."""
    if values.dim() == 0:
        return [1]
    per_row = math.prod(values.shape[1:])
    return [r * per_row for r in rows]


def segment_sums(values: Tensor, rows: tuple[int, ...]) -> Tensor:
    """Per-request sums as a [len(rows)] vector, by a pairwise tree of elementwise adds.

    Each request's elements go in one row of a [requests, P] buffer (P a power of two
    at least the largest request's size) padded with -0.0, which halves P times with
    ``left + right``. An elementwise add rounds each element alone, and adding -0.0
    is exact for every value (0.0 and -0.0 included), so halvings over padding change
    nothing: a request's sum is bitwise the same whatever else shares the batch, and
    the whole batch is summed in log2(P) kernel calls instead of one per request.
    """
    sizes = segment_sizes(values, rows)
    flat = values.reshape(-1)
    width = 1 << max(max(sizes) - 1, 0).bit_length()
    same = len(sizes) == 1 or all(size == sizes[0] for size in sizes)
    if same and sizes[0] == width:
        # Every request fills a power-of-two row: no padding, so the buffer is a view
        # and the tree below adds exactly what it adds on a padded copy. The copy
        # (new_full and an indexed assignment) was about a tenth of a small batch's
        # kernel (scripts/microbench_loss_kernel.py).
        buf = flat.reshape(len(sizes), width)
    elif same:
        buf = flat.new_full((len(sizes), width), -0.0)
        buf[:, : sizes[0]] = flat.reshape(len(sizes), sizes[0])
    else:
        buf = flat.new_full((len(sizes), width), -0.0)
        lengths = torch.tensor(sizes, device=flat.device)
        starts = torch.cumsum(lengths, 0) - lengths
        row = torch.repeat_interleave(torch.arange(len(sizes), device=flat.device), lengths)
        column = torch.arange(flat.numel(), device=flat.device) - starts[row]
        buf[row, column] = flat
    while width > 1:
        width //= 2
        buf = buf[:, :width] + buf[:, width:]
    return buf.reshape(-1)


def count_denoms(values: Tensor, rows: tuple[int, ...]) -> Tensor:
    """Divisors for a plain mean over each request's elements."""
    sizes = segment_sizes(values, rows)
    return torch.tensor(sizes, dtype=values.dtype, device=values.device)


def autograd_ready(t: Tensor) -> Tensor:
    # The executor may run under inference_mode; its tensors cannot be saved for
    # backward, a copy made outside it can.
    return t.clone() if t.is_inference() else t


def _element_upstream(
    grad_loss: Tensor | None,
    reduction: str,
    elements: Elements,
    rows: tuple[int, ...],
) -> Tensor:
    """The upstream gradient of every per-element loss."""
    values = elements.values
    if reduction == "none":
        if grad_loss is None:
            return torch.ones_like(values)
        return grad_loss.reshape(values.shape)
    # mean/sum/batchmean: one scalar per request (stacked by layout.assemble).
    ones = torch.ones_like(elements.denoms)
    per_request = ones if grad_loss is None else grad_loss.reshape(-1)
    if reduction != "sum":
        per_request = per_request / elements.denoms
    sizes = segment_sizes(values, rows)
    if len(set(sizes)) == 1:
        # Requests of one size (the common batch): a broadcast copies the same values
        # as repeat_interleave without building a sizes tensor.
        return per_request.reshape(-1, 1).expand(len(sizes), sizes[0]).reshape(values.shape)
    return torch.repeat_interleave(per_request, torch.tensor(sizes, device=values.device)).reshape(
        values.shape
    )


def _reduce(elements: Elements, reduction: str, rows: tuple[int, ...]) -> list[Tensor]:
    values = elements.values.detach()
    if reduction == "none":
        return split_rows(values, rows) if values.dim() > 0 else [values]
    sums = segment_sums(values, rows)
    per_request = sums if reduction == "sum" else sums / elements.denoms
    return list(per_request.unbind(0))


def _run_reduction(elements_fn: ElementFn, batch: Batch) -> Outputs:
    reduction: str = batch.params["reduction"]
    out_dtype = batch.tensors["input"].dtype
    want_loss = LOSS.name in batch.want
    want_grad = GRAD_INPUT.name in batch.want
    with torch.inference_mode(False), torch.enable_grad():
        tensors = {n: autograd_ready(upcast(t)) for n, t in batch.tensors.items()}
        x = tensors["input"].detach().requires_grad_(want_grad)
        elements = elements_fn(x, tensors, batch.params, batch.rows)
        grads: list[Tensor] = []
        if want_grad:
            upstream = _element_upstream(tensors.get(GRAD_LOSS.name), reduction, elements, batch.rows)
            (grad,) = torch.autograd.grad(elements.values, x, upstream)
            grads = split_rows(grad, batch.rows) if grad.dim() > 0 else [grad]
    losses = _reduce(elements, reduction, batch.rows) if want_loss else []
    outputs: Outputs = [{} for _ in batch.rows]
    for i, out in enumerate(outputs):
        if want_loss:
            out[LOSS.name] = losses[i].to(out_dtype)
        if want_grad:
            out[GRAD_INPUT.name] = grads[i].to(out_dtype)
    return outputs


def reduction_kernel(elements_fn: ElementFn) -> Kernel:
    """The kernel of a loss: its elements function run through the shared runner."""

    def run(batch: Batch) -> Outputs:
        return _run_reduction(elements_fn, batch)

    return run


def not_zero_dim(tensors: dict[str, Tensor], params: Params) -> bool:
    """A 0-d input has no row dim to concatenate along: it always runs alone."""
    return tensors["input"].dim() > 0
