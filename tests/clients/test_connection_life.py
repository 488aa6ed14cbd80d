"""Connection life against real `gradserve serve` processes: the keep-alive race, a burst
of gRPC calls, and a drain (issue 8).

The keep-alive race: a request sent on an idle keep-alive connection just as the server
closes it gets no answer (a reset: ReadError; or an empty one: RemoteProtocolError). On
an idle server the window is well under a millisecond, so it is rarely hit. It widens
under load: when the event loop comes back from a long step, libuv (uvloop) runs due
timers before it reads sockets, so a request that arrived during that step finds its
connection closed by the keep-alive timer with the request unread, and the kernel
answers with a reset. This test therefore keeps the server's loop busy (large kernels
that run inline on the loop: ``--inline-below-elements``) while idle connections are
reused at about the keep-alive timeout, with jitter.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import httpx
import numpy as np
import torch

from gradserve_client import AsyncClient, AsyncGrpcClient, Client, RetryPolicy
from tests.conftest import ServerProcess

KEEP_ALIVE_S = 1
SLOTS = 30  # probes per client kind and round
ROUNDS = 3  # at most; a round stops the raw client's search once it has been hit
# Relative to the keep-alive timeout: from well before it (the server's timer starts
# when it sent the answer, a little before the client has read it) to just after.
IDLE_WINDOW = (0.90, 1.02)
LOAD_ELEMENTS = 1_000_000  # a gelu with gradient of this size takes ~10 ms of loop time

NO_RETRY = RetryPolicy(max_retries=0)
SMALL = {"x": [1.0, -1.0]}


@contextmanager
def busy_loop(url: str, workers: int = 2) -> Iterator[list[int]]:
    """Keep the server's event loop busy with inline kernels until the block ends."""
    x = np.random.default_rng(0).standard_normal(LOAD_ELEMENTS).astype(np.float32)
    body = {
        "x": {"dtype": "float32", "shape": [LOAD_ELEMENTS], "b64": base64.b64encode(x.tobytes()).decode()}
    }
    body["grad"] = True  # type: ignore[assignment]
    content = httpx.Request("POST", url, json=body).read()  # encoded once, not per request
    stop = threading.Event()
    sent = [0] * workers

    def load(i: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                response = http.post(
                    "/v1/activations/gelu", content=content, headers={"content-type": "application/json"}
                )
                assert response.status_code == 200, response.text
                sent[i] += 1

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    try:
        yield sent
    finally:
        stop.set()
        for t in threads:
            t.join(60)


Probe = Callable[[float], Awaitable[str | None]]


def raw_httpx(url: str) -> Probe:
    """A bare httpx.AsyncClient with httpx's default pool (keep-alive expiry 5 s)."""

    async def probe(idle_s: float) -> str | None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            (await http.post("/v1/activations/relu", json=SMALL)).raise_for_status()
            await asyncio.sleep(idle_s)
            try:
                (await http.post("/v1/activations/relu", json=SMALL)).raise_for_status()
            except httpx.TransportError as exc:
                return f"{type(exc).__name__}: {exc}"
        return None

    return probe


def raw_httpx_sync(url: str) -> Probe:
    """A bare httpx.Client (default pool), one thread per probe."""

    def run(idle_s: float) -> str | None:
        with httpx.Client(base_url=url, timeout=30) as http:
            http.post("/v1/activations/relu", json=SMALL).raise_for_status()
            time.sleep(idle_s)
            try:
                http.post("/v1/activations/relu", json=SMALL).raise_for_status()
            except httpx.TransportError as exc:
                return f"{type(exc).__name__}: {exc}"
        return None

    async def probe(idle_s: float) -> str | None:
        return await asyncio.to_thread(run, idle_s)

    return probe


def sdk_async(url: str, **options: Any) -> Probe:
    async def probe(idle_s: float) -> str | None:
        async with AsyncClient(url, **options) as client:
            await client.activation("relu", [1.0, -1.0])
            await asyncio.sleep(idle_s)
            try:
                out = await client.activation("relu", [1.0, -1.0])
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"
            np.testing.assert_array_equal(out["y"], np.array([1.0, 0.0], np.float32))
        return None

    return probe


def sdk_sync(url: str, **options: Any) -> Probe:
    """The sync Client, one thread per probe."""

    def run(idle_s: float) -> str | None:
        with Client(url, **options) as client:
            client.activation("relu", [1.0, -1.0])
            time.sleep(idle_s)
            try:
                out = client.activation("relu", [1.0, -1.0])
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"
            np.testing.assert_array_equal(out["y"], np.array([1.0, 0.0], np.float32))
        return None

    async def probe(idle_s: float) -> str | None:
        return await asyncio.to_thread(run, idle_s)

    return probe


class RetryLog(logging.Handler):
    """Counts the SDK's retry log lines (one per retry)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.retries: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("retry "):
            self.retries["async" if threading.current_thread() is threading.main_thread() else "sync"] += 1


async def test_keep_alive_race(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(
        "--http-keep-alive-s", str(KEEP_ALIVE_S), "--inline-below-elements", str(4 * LOAD_ELEMENTS)
    )  # fmt: skip
    raw = ("raw httpx.AsyncClient", "raw httpx.Client")
    kinds: dict[str, Probe] = {
        # httpx's defaults: pool expiry 5 s, no retries (what the issue measured).
        raw[0]: raw_httpx(server.url),
        raw[1]: raw_httpx_sync(server.url),
        # The SDK's default pool expiry (4 s) is longer than this server's 1 s: the
        # race happens, and only the retry of a connection closed before any answer
        # saves the call.
        "AsyncClient, default pool, retries": sdk_async(server.url),
        "Client, default pool, retries": sdk_sync(server.url),
        # The pool expires connections before the server does: no race, even with no
        # retries at all.
        "AsyncClient, pool expiry 0.5 s, no retries": sdk_async(
            server.url, keepalive_expiry_s=0.5, retry=NO_RETRY
        ),
    }
    failures: dict[str, list[str]] = {kind: [] for kind in kinds}
    log = RetryLog()
    logger = logging.getLogger("gradserve_client")
    logger.addHandler(log)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    rng = random.Random(8)
    rounds = 0
    try:
        with busy_loop(server.url) as load_sent:
            while rounds < ROUNDS and (rounds == 0 or not (failures[raw[0]] or failures[raw[1]])):
                rounds += 1
                probes = [
                    (kind, probe(KEEP_ALIVE_S * rng.uniform(*IDLE_WINDOW)))
                    for kind, probe in kinds.items()
                    for _ in range(SLOTS)
                ]
                results = await asyncio.gather(*(p for _, p in probes))
                for (kind, _), result in zip(probes, results, strict=True):
                    if result is not None:
                        failures[kind].append(result)
    finally:
        logger.removeHandler(log)
        logger.setLevel(previous_level)

    summary = {kind: len(f) for kind, f in failures.items()}
    print(f"keep-alive race, {rounds} round(s) of {SLOTS} probes per kind, load requests {load_sent}:")
    print(f"  failed calls {summary}; SDK retries {dict(log.retries)}")
    print(f"  raw failures: {collections.Counter(f.split(':')[0] for k in raw for f in failures[k])}")
    # The SDK loses nothing, with either fix alone.
    for kind in kinds.keys() - set(raw):
        assert failures[kind] == [], (kind, failures[kind])
    # ...on a server where a bare client does hit the race (so the test can fail
    # without the fix). Reproduced in every run here (10-20 % of raw probes under this
    # load); if a machine is ever too fast for it, this is the line that says so.
    assert failures[raw[0]] or failures[raw[1]], f"the race was not reproduced in {rounds} rounds: {summary}"


# -- gRPC ----------------------------------------------------------------------------

BURST = 2_000
CHANNELS = 1  # the case: one client, one connection, its default retry policy
RAW_BURST = 3_000  # past grpc-core's default pending-call limits (1,000 soft, 3,000 hard)


async def test_grpc_burst_drops_nothing(server_factory: Callable[..., ServerProcess]) -> None:
    """3,000 concurrent calls on one plain grpc.aio channel, no retries: every one is
    answered.

    grpc-core queues calls that grpc.aio has not picked up yet, and by default drops
    them at random past 1,000 queued (RST_STREAM CANCEL; ~200 of a 2,000-call burst,
    ~700 of 3,000, before gradserve set the limits to its own RPC cap). A client
    without retries, such as tritonclient, saw those as failures.

    Its own server, with a queue that holds the whole burst: the shared server's
    queue (1,024) is below the burst, and in a CPU-starved run it may fill; its 429
    (RESOURCE_EXHAUSTED, retryable) is backpressure working, not the drop this test
    is about. (The test failed once on the shared server in a run beside other CPU
    load; its codes were not kept, and 8 repeats under two CPU hogs passed.)
    """
    server = server_factory("--max-queue-size", str(2 * RAW_BURST))
    from gradserve.grpc.generated import inference_pb2 as pb
    from gradserve.grpc.generated import inference_pb2_grpc as pb_grpc

    request = pb.ModelInferRequest(model_name="relu")
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "x", "FP32"
    tensor.shape.extend([4, 8])
    x = np.linspace(-1, 1, 32, dtype=np.float32)
    request.raw_input_contents.append(x.tobytes())
    want = np.maximum(x, 0)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def one() -> str:
            try:
                reply = await stub.ModelInfer(request, timeout=120)
            except grpc.aio.AioRpcError as exc:
                return exc.code().name
            np.testing.assert_array_equal(np.frombuffer(reply.raw_output_contents[0], np.float32), want)
            return "OK"

        codes = collections.Counter(await asyncio.gather(*(one() for _ in range(RAW_BURST))))
    assert codes == {"OK": RAW_BURST}, dict(codes)


async def test_grpc_burst(server: ServerProcess) -> None:
    """2,000 concurrent calls from one AsyncGrpcClient with its default retry policy:
    every one answers, equal to torch.

    Past the server's streams-per-connection cap grpcio refuses streams (RST_STREAM
    REFUSED_STREAM): the default cap (4096) is above the burst. The SDK would retry
    those, and the CANCELLEDs a grpc-core server with default pending-call limits sends
    (see test_grpc_burst_drops_nothing); gradserve sends none.
    """
    rng = np.random.default_rng(8)
    xs = [rng.standard_normal((4, 8)).astype(np.float32) for _ in range(BURST)]
    targets = [rng.integers(0, 8, 4) for _ in range(BURST)]
    log = RetryLog()
    logger = logging.getLogger("gradserve_client")
    logger.addHandler(log)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    clients = [
        AsyncGrpcClient(
            server.grpc_target,
            timeout_s=120,
            options=[("grpc.use_local_subchannel_pool", 1)],
        )
        for _ in range(CHANNELS)
    ]
    try:

        async def one(i: int) -> Any:
            client = clients[i % CHANNELS]
            if i % 2:
                return await client.activation("gelu", xs[i], grad=True)
            return await client.loss("cross_entropy", xs[i], targets[i], grad=True)

        outs = await asyncio.gather(*(one(i) for i in range(BURST)))
    finally:
        for client in clients:
            await client.aclose()
        logger.removeHandler(log)
        logger.setLevel(previous_level)
    print(f"gRPC burst of {BURST} over {CHANNELS} channels: SDK retries {sum(log.retries.values())}")
    for i, out in enumerate(outs):
        x = torch.from_numpy(xs[i]).requires_grad_(True)
        if i % 2:
            y = torch.nn.functional.gelu(x)
            (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
            want = {"y": y.detach().numpy(), "grad_x": grad.numpy()}
        else:
            loss = torch.nn.functional.cross_entropy(x, torch.from_numpy(targets[i]))
            (grad,) = torch.autograd.grad(loss, x)
            want = {"loss": loss.detach().numpy(), "grad_input": grad.numpy()}
        assert list(out) == list(want), i
        for name, expected in want.items():
            np.testing.assert_allclose(out[name], expected, rtol=1e-5, atol=1e-6, err_msg=f"{i} {name}")
