"""Activation ops (API.md section 1.1): the family's declarations (``SPECS``).

Flow position: the executor calls ``OpSpec.run`` on a ``Batch`` built by
``layout.assemble``; the checkers run earlier, at validation time, on one request's
CPU tensors. Pointwise ops are "elementwise" (flat padded tensors,
ops/pointwise_activations.py), softmax/log_softmax are "rows" (ops/softmax.py), prelu
and maxout are "solo" (ops/parametric_activations.py); what their kernels share is in
ops/activation_io.py.

Gradients use the aten backward ops autograd itself would call, so no autograd graph
is ever built, and the float64 answers match torch's own VJPs.
"""

from __future__ import annotations

from gradserve.ops.parametric_activations import MAXOUT, PRELU
from gradserve.ops.pointwise_activations import GELU_TANH_GRAD_CLAMP, POINTWISE, pointwise_spec
from gradserve.ops.registry import OpSpec
from gradserve.ops.softmax import softmax_specs

# GELU_TANH_GRAD_CLAMP is re-exported: the activation tests import it from here.
__all__ = ["GELU_TANH_GRAD_CLAMP", "SPECS"]


SPECS: tuple[OpSpec, ...] = (
    *(pointwise_spec(op) for op in POINTWISE),
    PRELU,
    *softmax_specs(),
    MAXOUT,
)
