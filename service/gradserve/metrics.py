"""Prometheus metrics, defined once, named in the style of Triton's nv_inference_*.

Flow position: the engine records each request's outcome and duration; the batcher
records queue waits, batch sizes and compute time. Each server builds its own
``Metrics`` on its own registry, so tests can run several apps in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gradserve.engine import OpRequest

CONTENT_TYPE = CONTENT_TYPE_LATEST
VERSION = "1"
# Microsecond buckets from 50 us to 10 s: small kernels sit at the low end.
_US_BUCKETS = (
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    1_000_000,
    10_000_000,
)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """Collectors for one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.success = Counter(
            "nv_inference_request_success",
            "Requests answered with a result, by op (model) and transport.",
            ["model", "version", "transport"],
            registry=r,
        )
        self.failure = Counter(
            "nv_inference_request_failure",
            "Requests answered with an error, by reason (the error code: queue_full, timeout, "
            "invalid_input, ...).",
            ["model", "version", "transport", "reason"],
            registry=r,
        )
        self.count = Counter(
            "nv_inference_count",
            "Requests computed (one per request in a batch).",
            ["model", "version"],
            registry=r,
        )
        self.exec_count = Counter(
            "nv_inference_exec_count", "Kernel calls (one per batch).", ["model", "version"], registry=r
        )
        self.pending = Gauge(
            "nv_inference_pending_request_count", "Requests waiting in the queue.", registry=r
        )
        self.request_us = Histogram(
            "nv_inference_request_duration_us",
            "Time from arrival at the engine to the answer, microseconds.",
            ["model", "version", "transport"],
            buckets=_US_BUCKETS,
            registry=r,
        )
        self.queue_us = Histogram(
            "nv_inference_queue_duration_us",
            "Time a request waited in the batcher's queue, microseconds.",
            ["model", "version"],
            buckets=_US_BUCKETS,
            registry=r,
        )
        self.compute_us = Histogram(
            "nv_inference_compute_infer_duration_us",
            "Kernel time of the batch a request ran in (assembly, kernel, split), microseconds.",
            ["model", "version"],
            buckets=_US_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "nv_inference_batch_size_rows",
            "Rows (dim 0, or requests for elementwise ops) per kernel call.",
            ["model", "version"],
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "nv_inference_batch_size_requests",
            "Requests per kernel call.",
            ["model", "version"],
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.gpu_memory_used = Gauge(
            "nv_gpu_memory_used_bytes",
            "Device memory allocated by torch (CUDA only).",
            ["gpu_uuid"],
            registry=r,
        )
        self.gpu_memory_total = Gauge(
            "nv_gpu_memory_total_bytes", "Device memory in total (CUDA only).", ["gpu_uuid"], registry=r
        )

    def answered(self, op: str, transport: str, outcome: str, duration_s: float) -> None:
        if outcome == "success":
            self.success.labels(op, VERSION, transport).inc()
        else:
            self.failure.labels(op, VERSION, transport, outcome).inc()
        self.request_us.labels(op, VERSION, transport).observe(duration_s * 1e6)

    def rejected(self, request: OpRequest) -> None:
        """Counted by ``answered`` with reason queue_full; nothing extra to record."""

    def set_pending(self, pending: int) -> None:
        self.pending.set(pending)

    def batch(self, op: str, requests: int, rows: int, compute_s: float) -> None:
        self.exec_count.labels(op, VERSION).inc()
        self.count.labels(op, VERSION).inc(requests)
        self.batch_rows.labels(op, VERSION).observe(rows)
        self.batch_requests.labels(op, VERSION).observe(requests)

    def queued(self, request: OpRequest, queue_s: float, compute_s: float) -> None:
        op = request.spec.name
        self.queue_us.labels(op, VERSION).observe(queue_s * 1e6)
        self.compute_us.labels(op, VERSION).observe(compute_s * 1e6)

    def refresh_device(self, device: str) -> None:
        """Read CUDA memory just before a scrape (cheap; nothing to do on CPU)."""
        import torch

        if not device.startswith("cuda") or not torch.cuda.is_available():
            return
        index = torch.device(device).index or 0
        uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", index))
        self.gpu_memory_used.labels(uuid).set(torch.cuda.memory_allocated(index))
        self.gpu_memory_total.labels(uuid).set(torch.cuda.get_device_properties(index).total_memory)

    def render(self) -> bytes:
        return generate_latest(self.registry)
