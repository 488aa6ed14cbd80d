"""Load: the closed-loop workers' clients and scenarios, valid traffic on every
transport and the faults mixed into it; each outcome goes to the Tally.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import math
import random
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import numpy as np
import orjson

from gradserve_client import AsyncClient, AsyncGrpcClient, GradserveError, Outputs, RetryPolicy

from .cases import Array, Case, big_activation, compare, decode_native, make_case, native_body
from .outcomes import Tally
from .server import Server

MiB = 1024 * 1024

# The server's defaults (config.py): the oversize faults declare one byte more.
MAX_BODY_BYTES = 64 * MiB
MAX_TENSOR_ELEMENTS = 16 * MiB
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def _error_code(exc: GradserveError) -> str:
    if exc.status is not None:
        return str(exc.status)
    if exc.grpc_code is not None:
        return str(exc.grpc_code)
    return type(exc).__name__


class Load:
    """The workers' shared clients and scenario table."""

    def __init__(self, server: Server, tally: Tally, args: argparse.Namespace) -> None:
        self.server = server
        self.tally = tally
        self.check_fraction: float = args.check_fraction
        no_retry = RetryPolicy(max_retries=0)  # count what the server answers, not what retries hide
        self.http = httpx.AsyncClient(base_url=server.url, timeout=20.0)
        self.v2_json = AsyncClient(server.url, binary=False, retry=no_retry, timeout_s=20.0)
        self.v2_binary = AsyncClient(server.url, binary=True, retry=no_retry, timeout_s=20.0)
        self.grpc = AsyncGrpcClient(server.grpc_target, retry=no_retry, timeout_s=20.0)
        self.raw_channel = grpc.aio.insecure_channel(server.grpc_target)
        self.raw_infer = self.raw_channel.unary_unary(MODEL_INFER)
        fault_each = args.fault_rate / 9
        # (weight, scenario); faults share --fault-rate, the rest is valid traffic.
        self.table: list[tuple[float, Callable[[random.Random], Any]]] = [
            (0.12, lambda r: self.valid_native(r, "activations")),
            (0.08, lambda r: self.valid_native(r, "losses")),
            (0.03, lambda r: self.valid_native(r, "init")),
            (0.23, lambda r: self.valid_sdk(r, "v2-json")),
            (0.23, lambda r: self.valid_sdk(r, "v2-binary")),
            (0.31, lambda r: self.valid_sdk(r, "grpc")),
            (fault_each * 2, self.disconnect),
            (fault_each, self.http_timeout),
            (fault_each * 2, self.grpc_cancel),
            (fault_each * 2, self.oversize),
            (fault_each * 2, self.fuzz),
        ]
        valid_total = sum(w for w, _ in self.table[:6])
        self.table[:6] = [(w / valid_total * (1 - args.fault_rate), s) for w, s in self.table[:6]]

    async def close(self) -> None:
        await self.http.aclose()
        await self.v2_json.aclose()
        await self.v2_binary.aclose()
        await self.grpc.aclose()
        await self.raw_channel.close()

    def _check(self, rng: random.Random, transport: str, case: Case, got: dict[str, Array]) -> None:
        if rng.random() >= self.check_fraction:
            return
        self.tally.checked += 1
        problem = compare(case, got)
        if problem is not None:
            self.tally.fail(f"{transport} WRONG ANSWER {case.op} {case.params}: {problem}")

    # -- valid traffic

    async def valid_native(self, rng: random.Random, family: str) -> None:
        case = make_case(rng, family)
        body = native_body(case, b64=rng.random() < 0.5)
        start = time.perf_counter()
        try:
            r = await self.http.post(f"/v1/{family}/{case.op}", content=body)
        except httpx.HTTPError as exc:
            self.tally.record("native", "valid", type(exc).__name__, None, case.op)
            return
        latency = time.perf_counter() - start
        self.tally.record("native", "valid", str(r.status_code), latency, f"{case.op}: {r.text[:200]}")
        if r.status_code == 200:
            self._check(rng, "native", case, decode_native(r.content))

    async def valid_sdk(self, rng: random.Random, transport: str) -> None:
        client: AsyncClient | AsyncGrpcClient = {
            "v2-json": self.v2_json,
            "v2-binary": self.v2_binary,
            "grpc": self.grpc,
        }[transport]
        case = make_case(rng, rng.choices(["activations", "losses", "init"], [0.45, 0.45, 0.1])[0])
        start = time.perf_counter()
        try:
            out: Outputs
            if case.family == "init":
                params = {k: v for k, v in case.params.items() if k != "shape"}
                out = await client.init(case.op, case.params["shape"], **params)
            else:
                out = await client.infer(case.op, case.inputs, case.params, outputs=case.want)
        except GradserveError as exc:
            self.tally.record(transport, "valid", _error_code(exc), None, f"{case.op}: {exc}")
            return
        self.tally.record(
            transport, "valid", "200" if transport != "grpc" else "OK", time.perf_counter() - start
        )
        self._check(rng, transport, case, dict(out))

    # -- faults

    async def _raw(self, data: bytes, *, read: bool, reset: bool = False, pause_s: float = 0.0) -> str:
        """Send bytes on a fresh connection; with ``read``, the answer's status code."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.http_port)
        try:
            writer.write(data)
            await writer.drain()
            if pause_s:
                await asyncio.sleep(pause_s)
            if not read:
                return "closed"
            line = await asyncio.wait_for(reader.readline(), 15.0)
            parts = line.split()
            return parts[1].decode() if len(parts) >= 2 else "no-answer"
        except (TimeoutError, ConnectionError) as exc:
            return f"no-answer:{type(exc).__name__}"
        finally:
            if reset:
                # SO_LINGER 0: close with a RST, as a crashed or killed client does.
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @staticmethod
    def _head(path: str, length: int, extra: str = "") -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n"
        ).encode()

    async def disconnect(self, rng: random.Random) -> None:
        """A client that leaves mid-body (closed or reset), or after a whole request
        without reading the answer."""
        case = make_case(rng, rng.choice(["activations", "losses"]))
        body = native_body(case, b64=False)
        path = f"/v1/{case.family}/{case.op}"
        transport = "native"
        if rng.random() < 0.4:
            transport = "v2-json"
            path = f"/v2/models/{case.op}/infer"
            body = orjson.dumps(
                {
                    "inputs": [
                        {"name": k, "shape": list(v.shape), "datatype": "FP32" if v.dtype == np.float32 else "INT64",
                         "data": v.ravel().tolist()}
                        for k, v in case.inputs.items()
                    ],
                    "parameters": case.params,
                }
            )  # fmt: skip
        whole = rng.random() < 0.25
        cut = len(body) if whole else rng.randint(0, max(0, len(body) - 1))
        code = await self._raw(
            self._head(path, len(body)) + body[:cut],
            read=False,
            reset=rng.random() < 0.5,
            pause_s=rng.uniform(0.0, 0.05),
        )
        self.tally.record(transport, "disconnect", code, None)

    async def http_timeout(self, rng: random.Random) -> None:
        """A request whose client gives up after a few milliseconds (connection closed)."""
        case = big_activation(rng)
        timeout_s = rng.uniform(0.001, 0.02)
        detail = ""
        if rng.random() < 0.5:
            transport = "native"
            try:
                async with httpx.AsyncClient(base_url=self.server.url, timeout=timeout_s) as c:
                    r = await c.post(f"/v1/activations/{case.op}", content=native_body(case, b64=True))
                code, detail = str(r.status_code), r.text[:200]
            except httpx.TimeoutException:
                code = "client-timeout"
            except httpx.HTTPError as exc:
                code, detail = type(exc).__name__, str(exc)
        else:
            transport = rng.choice(["v2-binary", "v2-json"])
            client = self.v2_binary if transport == "v2-binary" else self.v2_json
            try:
                await client.infer(case.op, case.inputs, case.params, timeout_s=timeout_s)
                code = "200"
            except GradserveError as exc:
                # The SDK's own timeout has no HTTP status; a 504 from the server has one.
                client_side = exc.status is None and type(exc).__name__ == "TimedOutError"
                code, detail = ("client-timeout" if client_side else _error_code(exc)), str(exc)
        self.tally.record(transport, "timeout", code, None, f"{case.op}: {detail}")

    async def grpc_cancel(self, rng: random.Random) -> None:
        """A gRPC call cancelled by its caller, or with a deadline too short to meet."""
        case = big_activation(rng)
        detail = ""
        try:
            if rng.random() < 0.5:
                try:
                    call = self.grpc.infer(case.op, case.inputs, case.params)
                    await asyncio.wait_for(call, timeout=rng.uniform(0.0005, 0.01))
                    code = "OK"
                except TimeoutError:
                    code = "client-cancel"
            else:
                await self.grpc.infer(case.op, case.inputs, case.params, timeout_s=rng.uniform(0.0005, 0.005))
                code = "OK"
        except GradserveError as exc:
            code, detail = _error_code(exc), str(exc)
            # The SDK reports its own deadline as a TimedOutError without a code.
            if code == "TimedOutError":
                code = "DEADLINE_EXCEEDED"
        self.tally.record("grpc", "cancel", code, None, f"{case.op}: {detail}")

    async def oversize(self, rng: random.Random) -> None:
        """Over a limit: a declared body one byte over (HTTP 413 before it is read), or
        an init shape over the element cap (413 / RESOURCE_EXHAUSTED)."""
        pick = rng.randrange(4)
        side = math.isqrt(MAX_TENSOR_ELEMENTS) + 1
        if pick == 0:
            head = self._head("/v1/activations/relu", MAX_BODY_BYTES + 1)
            code = await self._raw(head + b'{"x": [' + b"1.0," * 256, read=True)
            self.tally.record("native", "oversize", code, None)
        elif pick == 1:
            head = self._head(
                "/v2/models/relu/infer", MAX_BODY_BYTES + 1, "Inference-Header-Content-Length: 64\r\n"
            )
            code = await self._raw(head + bytes(1024), read=True)
            self.tally.record("v2-binary", "oversize", code, None)
        elif pick == 2:
            r = await self.http.post("/v1/init/normal", content=orjson.dumps({"shape": [side, side]}))
            self.tally.record("native", "oversize", str(r.status_code), None, r.text[:200])
        else:
            try:
                await self.grpc.init("normal", [side, side])
                code = "OK"
            except GradserveError as exc:
                code = _error_code(exc)
            self.tally.record("grpc", "oversize", code, None)

    async def fuzz(self, rng: random.Random) -> None:
        """Undecodable bodies: random bytes, truncated or mistyped JSON, lying V2 binary
        headers, bad gzip, and random bytes as a gRPC ModelInfer message."""
        pick = rng.randrange(6)
        junk = rng.randbytes(rng.randint(1, 2048))
        if pick == 5:
            try:
                await self.raw_infer(junk, timeout=10.0)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            self.tally.record("grpc", "fuzz", code, None, f"{len(junk)} random bytes")
            return
        case = make_case(rng, rng.choice(["activations", "losses"]))
        headers: dict[str, str] = {}
        if pick == 0:
            transport, path, body = "native", f"/v1/{case.family}/{case.op}", junk
        elif pick == 1:
            whole = native_body(case, b64=rng.random() < 0.5)
            transport, path, body = (
                "native",
                f"/v1/{case.family}/{case.op}",
                whole[: rng.randint(1, len(whole) - 1)],
            )
        elif pick == 2:
            wrong = rng.choice(
                # Not []: an empty tensor is a valid input (its answer is empty).
                [{}, "x", None, [[1.0], [1.0, 2.0]], {"dtype": "float32", "shape": [3], "b64": "AAAA"}]
            )
            transport, path = "native", f"/v1/{case.family}/{case.op}"
            body = orjson.dumps({next(iter(case.inputs)): wrong})
        elif pick == 3:
            header = orjson.dumps(
                {
                    "inputs": [
                        {
                            "name": "x",
                            "shape": [4, 4],
                            "datatype": "FP32",
                            "parameters": {"binary_data_size": 64},
                        }
                    ]
                }
            )
            transport, path = "v2-binary", "/v2/models/relu/infer"
            body = header + junk
            lie = rng.choice([len(header) + len(junk) + 7, 0, rng.randint(1, len(header) - 1), -1])
            headers["Inference-Header-Content-Length"] = str(lie) if lie >= 0 else "1x"
        else:
            transport, path = "v2-json", f"/v2/models/{case.op}/infer"
            body = junk if rng.random() < 0.5 else gzip.compress(junk)[:-4]
            headers["Content-Encoding"] = "gzip"
        try:
            r = await self.http.post(path, content=body, headers=headers)
            code, detail = str(r.status_code), r.text[:200]
        except httpx.HTTPError as exc:
            code, detail = type(exc).__name__, ""
        self.tally.record(transport, "fuzz", code, None, f"{path} pick={pick} {detail}")

    async def worker(self, seed: int, stop_at: float) -> None:
        rng = random.Random(seed)
        weights = [w for w, _ in self.table]
        scenarios = [s for _, s in self.table]
        while time.monotonic() < stop_at:
            scenario = rng.choices(scenarios, weights)[0]
            try:
                await scenario(rng)
            except Exception as exc:  # the soak goes on; an unexpected client error is a failure
                self.tally.fail(f"client error in {getattr(scenario, '__name__', scenario)}: {exc!r}")
