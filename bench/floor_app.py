"""The floor servers of `gradserve bench`: what plain FastAPI does with the same bytes.

Two kinds of endpoint, served by uvicorn with the options gradserve uses (httptools,
uvloop, access log off, one process, torch on one thread):

- a **do-nothing** endpoint (``noop_<op>``) that reads the raw body and answers a tiny
  response: the transport floor of the framework (what a request costs before any
  work);
- an **unbatched op** endpoint (``cross_entropy``, ``relu``) that reads a raw V2 binary
  body (JSON header + tensor bytes, the Open Inference Protocol's binary extension),
  runs the same torch op directly on the event loop, and answers V2 binary: the
  "obvious FastAPI service" a user would write by hand.

Both speak just enough of V2 (``GET /v2``, ``/v2/models/{m}``, ``/v2/models/{m}/config``,
``POST /v2/models/{m}/infer``) that perf_analyzer and the Python load generator drive
them exactly as they drive gradserve, so the ratios compare servers, not clients.
``--mirror FILE`` copies gradserve's model metadata and config (so perf_analyzer sends
byte-identical requests, asking for the same outputs); the op computes whatever
outputs the request names.

Run: ``PYTHONPATH=service python bench/floor_app.py --port 9000 [--mirror meta.json]``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import orjson
import torch
import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from gradserve.bench.workloads import LARGE_OP, NOOP_PREFIX, SMALL_OP, run_large_op, run_small_op

# torch.frombuffer on the (read-only) request bytes: the ops never write their inputs.
warnings.filterwarnings("ignore", message="The given buffer is not writable")

V2_TO_TORCH: dict[str, torch.dtype] = {
    "FP32": torch.float32,
    "FP64": torch.float64,
    "FP16": torch.float16,
    "BF16": torch.bfloat16,
    "INT64": torch.int64,
    "INT32": torch.int32,
}
TORCH_TO_V2 = {v: k for k, v in V2_TO_TORCH.items()}
HEADER = "inference-header-content-length"

DEFAULT_MODELS: dict[str, dict[str, Any]] = {
    SMALL_OP: {
        "metadata": {
            "name": SMALL_OP,
            "platform": "floor",
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [-1, -1]},
                {"name": "target", "datatype": "INT64", "shape": [-1]},
            ],
            "outputs": [{"name": "loss", "datatype": "FP32", "shape": [-1]}],
        },
        "config": {"name": SMALL_OP, "max_batch_size": 0},
    },
    LARGE_OP: {
        "metadata": {
            "name": LARGE_OP,
            "platform": "floor",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
        },
        "config": {"name": LARGE_OP, "max_batch_size": 0},
    },
}

NOOP_RESPONSE = b'{"model_name":"noop","outputs":[]}'


def with_noops(models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Add ``noop_<op>`` for each op: the op's inputs, no outputs, no work."""
    out = dict(models)
    for op, entry in models.items():
        name = NOOP_PREFIX + op
        out[name] = {
            "metadata": {**entry["metadata"], "name": name, "outputs": []},
            "config": {**entry["config"], "name": name, "output": []},
        }
    return out


def _decode(body: bytes, header_len: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A V2 binary (or JSON) request body -> (JSON header, input tensors)."""
    header = orjson.loads(body[:header_len] if header_len else body)
    tensors: dict[str, torch.Tensor] = {}
    offset = header_len
    for inp in header["inputs"]:
        dtype = V2_TO_TORCH[inp["datatype"]]
        shape = [int(d) for d in inp["shape"]]
        size = (inp.get("parameters") or {}).get("binary_data_size")
        if size is None:
            tensors[inp["name"]] = torch.tensor(inp["data"], dtype=dtype).reshape(shape)
            continue
        count = size // torch.empty((), dtype=dtype).element_size()
        t = torch.frombuffer(body, dtype=dtype, count=count, offset=offset) if count else torch.empty(0)
        tensors[inp["name"]] = t.reshape(shape)
        offset += size
    return header, tensors


def _encode(model: str, request_id: str, outputs: dict[str, torch.Tensor]) -> Response:
    """Outputs -> a V2 binary response (JSON header + raw bytes)."""
    entries = []
    blobs = []
    for name, t in outputs.items():
        raw = t.contiguous().numpy().tobytes()
        blobs.append(raw)
        entries.append(
            {
                "name": name,
                "datatype": TORCH_TO_V2[t.dtype],
                "shape": list(t.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
    head = orjson.dumps({"model_name": model, "id": request_id, "outputs": entries})
    return Response(
        b"".join([head, *blobs]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )


def create_app(models: dict[str, dict[str, Any]]) -> FastAPI:
    app = FastAPI(title="gradserve bench floor", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response(b'{"status":"ready"}', media_type="application/json")

    @app.get("/v2")
    async def server_metadata() -> Response:
        body = {"name": "floor", "version": "1", "extensions": ["binary_tensor_data"]}
        return Response(orjson.dumps(body), media_type="application/json")

    @app.get("/v2/models/{model}")
    async def model_metadata(model: str) -> Response:
        if model not in models:
            return Response(b'{"error":"unknown model"}', status_code=404, media_type="application/json")
        return Response(orjson.dumps(models[model]["metadata"]), media_type="application/json")

    @app.get("/v2/models/{model}/config")
    async def model_config(model: str) -> Response:
        if model not in models:
            return Response(b'{"error":"unknown model"}', status_code=404, media_type="application/json")
        return Response(orjson.dumps(models[model]["config"]), media_type="application/json")

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> Response:
        body = await request.body()
        # (a) do-nothing: the raw body is read; answer a tiny response.
        if model.startswith(NOOP_PREFIX):
            return Response(NOOP_RESPONSE, media_type="application/json")
        # (b) unbatched op: decode the V2 binary body, run the op right here, answer binary.
        header, tensors = _decode(body, int(request.headers.get(HEADER, "0")))
        wanted = [o["name"] for o in header.get("outputs") or []]
        if model == SMALL_OP:
            outputs = run_small_op(tensors["input"], tensors["target"], "grad_input" in wanted)
        elif model == LARGE_OP:
            outputs = run_large_op(tensors["x"], "grad_x" in wanted)
        else:
            return Response(b'{"error":"unknown model"}', status_code=404, media_type="application/json")
        if wanted:
            outputs = {k: v for k, v in outputs.items() if k in wanted}
        return _encode(model, str(header.get("id", "")), outputs)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mirror", type=Path, help="JSON {model: {metadata, config}} copied from gradserve")
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    models = dict(DEFAULT_MODELS)
    if args.mirror is not None:
        models.update(json.loads(args.mirror.read_text()))
    uvicorn.run(
        create_app(with_noops(models)),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
