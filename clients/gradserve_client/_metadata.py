"""Metadata: what the server says about itself and its ops, as frozen dataclasses.

Flow position: a client's ``model_metadata`` / ``server_metadata`` / ``ops`` call ->
the V2 REST JSON or gRPC message -> **model_metadata_from_json / _from_grpc /
ops_from_catalog** -> ``ModelMetadata`` (cached per client), ``ServerMetadata``,
``OpInfo``. A ``grad=True`` call reads its op's ``ModelMetadata`` to pick the
outputs to ask for (**wanted_outputs**).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gradserve_client._tensors import WireTensor

MODEL_VERSION = "1"


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    """V2 model metadata of one op: its input and output tensors."""

    name: str
    platform: str
    versions: tuple[str, ...]
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]

    # Cached: a grad=True call asks for them on every call (frozen dataclasses allow
    # cached_property, which writes the instance __dict__ directly).
    @functools.cached_property
    def grad_outputs(self) -> tuple[str, ...]:
        """Outputs that are gradients: named ``grad_<input>`` (API.md section 1)."""
        names = {t.name for t in self.inputs}
        return tuple(o.name for o in self.outputs if o.name.startswith("grad_") and o.name[5:] in names)

    @functools.cached_property
    def plain_outputs(self) -> tuple[str, ...]:
        grads = set(self.grad_outputs)
        return tuple(o.name for o in self.outputs if o.name not in grads)


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True)
class OpInfo:
    """One entry of the op catalog (GET /v1/ops)."""

    name: str
    family: str
    kind: str
    doc: str
    inputs: tuple[str, ...]
    optional_inputs: tuple[str, ...]
    params: dict[str, Any]  # name -> default
    outputs: tuple[str, ...]
    grad_outputs: tuple[str, ...]


def model_metadata_from_json(body: Mapping[str, Any]) -> ModelMetadata:
    def tensors(key: str) -> tuple[TensorMetadata, ...]:
        return tuple(
            TensorMetadata(t["name"], t["datatype"], tuple(int(d) for d in t["shape"]))
            for t in body.get(key, ())
        )

    return ModelMetadata(
        str(body["name"]),
        str(body.get("platform", "")),
        tuple(body.get("versions", ())),
        tensors("inputs"),
        tensors("outputs"),
    )


def model_metadata_from_grpc(msg: Any) -> ModelMetadata:
    def tensors(items: Any) -> tuple[TensorMetadata, ...]:
        return tuple(TensorMetadata(t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in items)

    return ModelMetadata(
        msg.name, msg.platform, tuple(msg.versions), tensors(msg.inputs), tensors(msg.outputs)
    )


def ops_from_catalog(body: Mapping[str, Any]) -> list[OpInfo]:
    return [
        OpInfo(
            name=op["name"],
            family=op["family"],
            kind=op["kind"],
            doc=op.get("doc", ""),
            inputs=tuple(t["name"] for t in op["inputs"]),
            optional_inputs=tuple(t["name"] for t in op["inputs"] if t.get("optional")),
            params={p["name"]: p.get("default") for p in op["params"]},
            outputs=tuple(op["outputs"]),
            grad_outputs=tuple(op.get("grad_outputs", ())),
        )
        for op in body["ops"]
    ]


def wanted_outputs(meta: ModelMetadata, sent: Iterable[WireTensor]) -> tuple[str, ...]:
    """The outputs of ``grad=True``: the plain outputs, then the gradient of each input
    that was sent. (An optional input left out has no gradient to ask for; prelu's
    default ``alpha`` is the one case where the server could still give one, so send
    ``alpha`` to get ``grad_alpha``.)"""
    names = {t.name for t in sent}
    return meta.plain_outputs + tuple(g for g in meta.grad_outputs if g[5:] in names)
