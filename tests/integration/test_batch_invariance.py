"""Batch invariance end to end (API.md section 1): 1,000 concurrent mixed requests over
native REST, V2 REST and gRPC against a real server; every answer is bitwise the
answer the same request gets when sent alone, and /metrics shows batching happened."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import torch

from tests.conftest import ServerProcess
from tests.integration.wire import Case, metric_total, scrape, send_grpc, send_native, send_v2

N_REQUESTS = 1000


def mixed_cases(n: int) -> list[Case]:
    g = torch.Generator().manual_seed(1234)

    def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * 3).to(dtype)

    def classes(rows: int, c: int) -> torch.Tensor:
        return torch.randint(0, c, (rows,), generator=g)

    builders: list[Callable[[int, int], Case]] = [
        lambda i, r: Case("relu", {"x": randn(r, 8)}, grad=i % 2 == 0),
        lambda i, r: Case(
            "sigmoid", {"x": randn(r, 3, 4, dtype=(torch.float32, torch.float64)[i % 2])}, grad=True
        ),
        lambda i, r: Case(
            "gelu",
            {"x": randn(r, 5, dtype=(torch.float32, torch.bfloat16)[i % 2])},
            {"approximate": ("none", "tanh")[(i // 2) % 2]},
            grad=True,
        ),
        lambda i, r: Case("softmax", {"x": randn(r, 10)}),
        lambda i, r: Case(
            "log_softmax", {"x": randn(r, 10, dtype=(torch.float32, torch.float16)[i % 2])}, grad=True
        ),
        lambda i, r: Case(
            "cross_entropy",
            {"input": randn(r, 5), "target": classes(r, 5)},
            {"reduction": ("mean", "sum", "none")[i % 3]},
            grad=True,
        ),
        lambda i, r: Case(
            "mse",
            {"input": randn(r, 4), "target": randn(r, 4)},
            {"reduction": ("mean", "sum")[i % 2]},
            grad=i % 3 > 0,
        ),
        lambda i, r: Case(
            "hinge", {"input": randn(r, 5), "target": classes(r, 5)}, {"margin": 1.0}, grad=True
        ),
        lambda i, r: Case(
            "kl_div",
            {
                "input": torch.log_softmax(randn(r, 6), dim=1),
                "target": torch.softmax(randn(r, 6), dim=1),
            },
            {"reduction": ("batchmean", "sum", "mean")[i % 3]},
            grad=True,
        ),
        # Solo ops: they share the queue but never a batch.
        lambda i, r: Case("prelu", {"x": randn(r, 3), "alpha": randn(3) / 10}, grad=True),
        lambda i, r: Case(
            "regularization",
            {"weight": randn(4, 4)},
            {"kind": ("l1", "l2")[i % 2], "strength": 0.5},
            grad=True,
        ),
        lambda i, r: Case("normal", params={"shape": [4, 3], "seed": i, "std": 0.1}),
    ]
    # Mostly batchable ops, a few solo ones.
    weights = [12, 10, 10, 10, 10, 12, 10, 8, 8, 3, 3, 4]
    cases: list[Case] = []
    picks = torch.multinomial(torch.tensor(weights, dtype=torch.float), n, replacement=True, generator=g)
    for i, k in enumerate(picks.tolist()):
        cases.append(builders[k](i, 1 + i % 4))
    return cases


Sender = Callable[[Case], Awaitable[tuple[int, bytes]]]


@pytest.mark.timeout(60)
async def test_concurrent_mixed_requests_answer_as_if_alone(server: ServerProcess) -> None:
    started = time.monotonic()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=server.url, timeout=30.0, limits=limits) as client:
        senders: list[tuple[str, Sender]] = [
            ("native", lambda c: send_native(client, c)),
            ("v2", lambda c: send_v2(client, c)),
        ]
        channel: Any = None
        try:
            import grpc

            from gradserve.grpc.generated import inference_pb2_grpc as pb_grpc

            channel = grpc.aio.insecure_channel(server.grpc_target)
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            senders.append(("grpc", lambda c: send_grpc(stub, c)))
        except ImportError:  # pragma: no cover - gRPC stubs not generated
            pass
        try:
            before = await scrape(client)
            cases = mixed_cases(N_REQUESTS)
            plan = [(case, *senders[i % len(senders)]) for i, case in enumerate(cases)]
            together = await asyncio.gather(*(send(case) for case, _, send in plan))
            after = await scrape(client)
            # The same requests, one at a time: each runs alone.
            alone = [await send(case) for case, _, send in plan]
        finally:
            if channel is not None:
                await channel.close()
    mismatches = []
    for (case, transport, _), (status, body), (ref_status, ref_body) in zip(
        plan, together, alone, strict=True
    ):
        assert status in (0, 200), (transport, case.op, status, body[:300])
        assert ref_status == status, (transport, case.op, ref_status, ref_body[:300])
        if body != ref_body:
            mismatches.append(
                (transport, case.op, case.params, {n: t.dtype for n, t in case.tensors.items()})
            )
    assert not mismatches, f"{len(mismatches)} answers differ from the lone answer, e.g. {mismatches[:5]}"

    # Batching did happen: some kernel calls served more than one request.
    calls = metric_total(after, "nv_inference_batch_size_requests_count") - metric_total(
        before, "nv_inference_batch_size_requests_count"
    )
    single = metric_total(after, "nv_inference_batch_size_requests_bucket", le="1.0") - metric_total(
        before, "nv_inference_batch_size_requests_bucket", le="1.0"
    )
    computed = metric_total(after, "nv_inference_count") - metric_total(before, "nv_inference_count")
    assert computed == N_REQUESTS
    assert calls - single > 0, "no batch of more than one request"
    assert calls < N_REQUESTS
    assert time.monotonic() - started < 60
