"""V2 model metadata, Triton model config and server metadata, built from the op registry.

Flow position: rest/v2.py and grpc/servicer.py answer metadata and config requests from
here, so both transports describe each op (a model named after it, version "1") alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gradserve import __version__
from gradserve.codecs.v2_protocol import EXTENSIONS, MODEL_VERSION, PLATFORM, SERVER_NAME
from gradserve.errors import OpNotFound
from gradserve.ops.registry import OpSpec, OutputSpec, TensorSpec


def check_version(spec: OpSpec, version: str | None) -> None:
    """Each op is a model with the single version "1"; "" (gRPC) means the latest."""
    if version not in (None, "", MODEL_VERSION):
        raise OpNotFound(
            f"model {spec.name!r} has no version {version[:32]!r}; its only version is {MODEL_VERSION}"
        )


# ---------------------------------------------------------------- metadata and config

# Metadata shapes: every dim is -1 (dynamic); the rank is the op's usual one, from its
# declaration (any rank is accepted where the op allows it).


def _loss_rank(spec: OpSpec) -> int:
    # A loss with a reduction param is [] for mean/sum and per-sample for "none": its
    # rank is dynamic, which V2 cannot say; one -1 dim stands for it.
    return 1 if "reduction" in spec.param_index else 0


def _input_rank(spec: OpSpec, t: TensorSpec) -> int:
    if t.rank is not None:
        return t.rank
    if t.name == "grad_loss":
        return _loss_rank(spec)
    return 1 if t.kind in ("index", "target", "int") else 2


def _output_rank(spec: OpSpec, o: OutputSpec) -> int:
    if o.rank is not None:
        return o.rank
    source = spec.input_index.get(o.name.removeprefix("grad_")) if o.name.startswith("grad_") else None
    if source is not None:
        return _input_rank(spec, source)
    return _loss_rank(spec) if o.name == "loss" else 2


def _input_datatype(t: TensorSpec) -> str:
    # Float inputs accept FP32/FP64/FP16/BF16; metadata names the default.
    return "FP32" if t.kind == "float" else "INT64"


def _tensor_list(spec: OpSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    # No input is rank 0 in metadata: Triton has no rank-0 tensors and perf_analyzer
    # cannot fill one ("unable to set shape for the input"); a scalar upstream gradient
    # (grad_loss, grad_penalty) is listed as [-1] and still sent with shape [].
    inputs = [
        {
            "name": t.name,
            "datatype": _input_datatype(t),
            "shape": [-1] * max(1, _input_rank(spec, t)),
            "optional": t.optional,
        }
        for t in spec.inputs
    ]
    if spec.family == "init" and "shape" not in spec.input_index:
        inputs.append({"name": "shape", "datatype": "INT64", "shape": [-1], "optional": True})
    outputs = [
        {
            "name": o.name,
            "datatype": "INT64" if o.dtype == "int64" else "FP32",
            "shape": [-1] * _output_rank(spec, o),
        }
        for o in (*spec.outputs, *spec.grad_outputs)
    ]
    return inputs, outputs


def model_metadata(spec: OpSpec) -> dict[str, Any]:
    """V2 model metadata (REST body; the gRPC message is parsed from it)."""
    inputs, outputs = _tensor_list(spec)
    return {
        "name": spec.name,
        "versions": [MODEL_VERSION],
        "platform": PLATFORM,
        "inputs": [{k: v for k, v in t.items() if k != "optional"} for t in inputs],
        "outputs": outputs,
    }


def model_config(spec: OpSpec) -> dict[str, Any]:
    """Triton model config (proto field names), what perf_analyzer reads.

    ``max_batch_size`` 0: to Triton clients each request is a whole tensor of any
    shape; gradserve's own dynamic batching happens behind that (it concatenates
    requests along dim 0 or elementwise) and needs nothing from the client.
    """
    inputs, outputs = _tensor_list(spec)
    return {
        "name": spec.name,
        "platform": PLATFORM,
        "backend": PLATFORM,
        "max_batch_size": 0,
        "input": [
            {
                "name": t["name"],
                "data_type": "TYPE_" + t["datatype"],
                "dims": t["shape"],
                "optional": t["optional"],
            }
            for t in inputs
        ],
        "output": [
            {"name": t["name"], "data_type": "TYPE_" + t["datatype"], "dims": t["shape"]} for t in outputs
        ],
    }


def server_metadata(extra: Sequence[str] = ()) -> dict[str, Any]:
    """``extra``: the extensions that settings turn on (shm.SharedMemory.extensions)."""
    return {"name": SERVER_NAME, "version": __version__, "extensions": [*EXTENSIONS, *extra]}
