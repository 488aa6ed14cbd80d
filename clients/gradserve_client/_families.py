"""The op-family methods every client and stream shares, written once: ``activation``,
``loss``, ``init``, ``activation_stats`` and ``infer``.

Flow position: a caller's method call -> **SyncFamilies / AsyncFamilies** (the wire
tensors from ``_core``: ``activation_inputs``, ``loss_inputs``, ``encode_inputs``;
init's ``shape`` param) -> the class's own ``_run`` (``Client``, ``GrpcClient``,
``InferStream`` through ``SyncFamilies``; ``AsyncClient``, ``AsyncGrpcClient``,
``AsyncInferStream`` through ``AsyncFamilies``), which sends them.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence

from gradserve_client import _core
from gradserve_client._core import Outputs, ParamValue, TensorLike


class SyncFamilies:
    """The op-family methods of the blocking clients, over the class's ``_run``."""

    @abstractmethod
    def _run(
        self,
        op: str,
        tensors: list[_core.WireTensor],
        params: Mapping[str, ParamValue],
        outputs: Sequence[str] | None,
        grad: bool,
        timeout_s: float | None,
    ) -> Outputs:
        """One call, encoded tensors in: the class sends it and decodes the answer."""

    def activation(
        self,
        op: str,
        x: TensorLike,
        *,
        grad: bool = False,
        inputs: Mapping[str, TensorLike] | None = None,
        timeout_s: float | None = None,
        **params: ParamValue,
    ) -> Outputs:
        """Run an activation op on ``x``.

        Args:
            op: the op name (``"relu"``, ``"gelu"``, ``"prelu"``...).
            x: the input tensor; nested lists and integer lists are sent as float32.
            grad: also return the gradients (``grad_x``, and ``grad_<input>`` of each extra input).
            inputs: extra tensors: ``grad_y`` (upstream gradient), prelu's ``alpha``,
                maxout's ``weight`` and ``bias``.
            timeout_s: this call's timeout (default: the client's; on a stream, the stream's).
            **params: the op's params, e.g. ``negative_slope=0.2``.

        Returns:
            ``y`` (and the gradients) as numpy arrays keyed by output name.
        """
        return self._run(op, _core.activation_inputs(x, inputs), params, None, grad, timeout_s)

    def loss(
        self,
        op: str,
        input: TensorLike | None = None,
        target: TensorLike | None = None,
        *,
        grad: bool = False,
        inputs: Mapping[str, TensorLike] | None = None,
        timeout_s: float | None = None,
        **params: ParamValue,
    ) -> Outputs:
        """Run a loss op (also ``regularization`` and ``full_loss``).

        Args:
            op: the op name (``"cross_entropy"``, ``"mse"``, ``"hinge"``...).
            input: scores or predictions (sent as float32 when given as a list).
            target: targets (integer lists are sent as int64 class indices).
            grad: also return the gradients (``grad_input``...).
            inputs: other tensors: ``weight``, ``pos_weight``, ``grad_loss``; for
                ``regularization`` its ``weight``; for ``full_loss`` ``x``, ``weight``, ``bias``.
            timeout_s: this call's timeout.
            **params: e.g. ``reduction="sum"``, ``label_smoothing=0.1``.
        """
        return self._run(op, _core.loss_inputs(input, target, inputs), params, None, grad, timeout_s)

    def init(
        self, op: str, shape: Sequence[int], *, timeout_s: float | None = None, **params: ParamValue
    ) -> Outputs:
        """Run a weight-initialization op: returns ``weight`` and the ``std`` it aimed for.

        Args:
            op: the op name (``"kaiming_normal"``, ``"xavier_uniform"``...).
            shape: the weight's shape, PyTorch style ([fan_out, fan_in, *kernel]).
            **params: e.g. ``seed=0``, ``dtype="float64"``, ``mode="fan_out"``.
        """
        return self._run(op, [], {**params, "shape": tuple(shape)}, None, False, timeout_s)

    def activation_stats(self, *, timeout_s: float | None = None, **params: ParamValue) -> Outputs:
        """Run the lab's experiment (API.md 6): a unit-Gaussian batch through a deep net.

        Args:
            **params: ``depth`` (10), ``width`` (500), ``batch`` (1000), ``activation``
                ("tanh"), ``init`` ("normal") and that init's own params (``std``,
                ``mode``, ``gain``...), ``seed`` (0), ``bins`` (50).
            timeout_s: this call's timeout.

        Returns:
            Per layer, layer 1 first: ``mean``, ``std``, ``saturated``, ``dead``,
            ``grad_std`` (float32 [depth]), ``hist`` (int64 [depth, bins]) and ``edges``
            (float32 [depth, bins + 1]), as numpy arrays.
        """
        return self._run("activation_stats", [], params, None, False, timeout_s)

    def infer(
        self,
        op: str,
        inputs: Mapping[str, TensorLike] | None = None,
        params: Mapping[str, ParamValue] | None = None,
        outputs: Sequence[str] | None = None,
        *,
        grad: bool = False,
        timeout_s: float | None = None,
    ) -> Outputs:
        """Run any op with named tensors and params.

        ``outputs`` names the outputs to return (gradients included); without it the
        op's plain outputs come back, plus the gradients when ``grad``. Given, it wins
        over ``grad``: ``outputs=["y"], grad=True`` returns ``y`` alone.
        """
        return self._run(op, _core.encode_inputs(inputs), params or {}, outputs, grad, timeout_s)


class AsyncFamilies:
    """``SyncFamilies``' twin for the asyncio clients: the same methods, awaited."""

    @abstractmethod
    async def _run(
        self,
        op: str,
        tensors: list[_core.WireTensor],
        params: Mapping[str, ParamValue],
        outputs: Sequence[str] | None,
        grad: bool,
        timeout_s: float | None,
    ) -> Outputs:
        """One call, encoded tensors in: the class sends it and decodes the answer."""

    async def activation(
        self,
        op: str,
        x: TensorLike,
        *,
        grad: bool = False,
        inputs: Mapping[str, TensorLike] | None = None,
        timeout_s: float | None = None,
        **params: ParamValue,
    ) -> Outputs:
        return await self._run(op, _core.activation_inputs(x, inputs), params, None, grad, timeout_s)

    async def loss(
        self,
        op: str,
        input: TensorLike | None = None,
        target: TensorLike | None = None,
        *,
        grad: bool = False,
        inputs: Mapping[str, TensorLike] | None = None,
        timeout_s: float | None = None,
        **params: ParamValue,
    ) -> Outputs:
        return await self._run(op, _core.loss_inputs(input, target, inputs), params, None, grad, timeout_s)

    async def init(
        self, op: str, shape: Sequence[int], *, timeout_s: float | None = None, **params: ParamValue
    ) -> Outputs:
        return await self._run(op, [], {**params, "shape": tuple(shape)}, None, False, timeout_s)

    async def activation_stats(self, *, timeout_s: float | None = None, **params: ParamValue) -> Outputs:
        return await self._run("activation_stats", [], params, None, False, timeout_s)

    async def infer(
        self,
        op: str,
        inputs: Mapping[str, TensorLike] | None = None,
        params: Mapping[str, ParamValue] | None = None,
        outputs: Sequence[str] | None = None,
        *,
        grad: bool = False,
        timeout_s: float | None = None,
    ) -> Outputs:
        return await self._run(op, _core.encode_inputs(inputs), params or {}, outputs, grad, timeout_s)


# The awaited methods read as their blocking twins (help(), IDEs): one text for both.
for _name in ("activation", "loss", "init", "activation_stats", "infer"):
    getattr(AsyncFamilies, _name).__doc__ = getattr(SyncFamilies, _name).__doc__
del _name
