"""Prometheus metrics at /metrics, named as Triton names them.

Flow position: the engine records each request's outcome and duration; the batcher
records queue waits, batch sizes, compute time and the queue's depth.

Triton's own series are exposed under Triton's exact names and types, so dashboards
and perf_analyzer's scrapes written for Triton read them unchanged: counters without
a ``_total`` suffix (``nv_inference_request_success``, ...), cumulative microsecond
counters (``nv_inference_request_duration_us``, ...) and the pending-request gauge.
prometheus_client always renders counters as ``<name>_total``, so these few are
rendered here by hand. The distributions Triton has no series for (latency and batch
size histograms) come from prometheus_client under ``nv_inference_*`` names of their
own. Metrics are only touched from the event loop, so plain dicts need no lock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from gradserve.engine import OpRequest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
VERSION = "1"
# Microsecond buckets from 50 us to 10 s: small kernels sit at the low end.
_US_BUCKETS = (
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 10_000_000,
)  # fmt: skip
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Device memory gauges, served only when the device is a CUDA GPU.
GPU_GAUGES = (
    ("nv_gpu_memory_used_bytes", "Device memory allocated by torch (CUDA only)."),
    ("nv_gpu_memory_total_bytes", "Device memory in total (CUDA only)."),
)


def _number(value: float) -> str:
    """Prometheus' spelling of a sample value (``1.0``, ``+Inf``, ``NaN``)."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _Series:
    """One Triton-style counter or gauge family: exact name, labelled values."""

    def __init__(self, name: str, kind: str, doc: str, labels: Sequence[str]) -> None:
        self.name, self.kind, self.doc, self.labels = name, kind, doc, tuple(labels)
        self.values: defaultdict[tuple[str, ...], float] = defaultdict(float)

    def add(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        self.values[labels] += amount

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {self.doc}\n# TYPE {self.name} {self.kind}\n")
        for labels, value in self.values.items():
            pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in zip(self.labels, labels, strict=True))
            out.append(
                f"{self.name}{{{pairs}}} {_number(value)}\n" if pairs else f"{self.name} {_number(value)}\n"
            )


class Metrics:
    """The collectors of one server (each server its own, so tests can run several)."""

    def __init__(self) -> None:
        s = _Series
        self.success = s(
            "nv_inference_request_success", "counter",
            "Requests answered with a result, by op (model) and transport (rest, v2, grpc).",
            ["model", "version", "transport"],
        )  # fmt: skip
        self.failure = s(
            "nv_inference_request_failure", "counter",
            "Requests answered with an error, by reason: the error code (queue_full, timeout, "
            "invalid_input, op_not_found, unavailable, cancelled, ...).",
            ["model", "version", "transport", "reason"],
        )  # fmt: skip
        self.count = s(
            "nv_inference_count",
            "counter",
            "Requests computed (one per request in a batch).",
            ["model", "version"],
        )
        self.exec_count = s(
            "nv_inference_exec_count", "counter", "Kernel calls (one per batch).", ["model", "version"]
        )
        self.request_us = s(
            "nv_inference_request_duration_us", "counter",
            "Cumulative time from arrival at the engine to the answer, microseconds.",
            ["model", "version", "transport"],
        )  # fmt: skip
        self.queue_us = s(
            "nv_inference_queue_duration_us", "counter",
            "Cumulative time requests waited in the batcher's queue, microseconds.",
            ["model", "version"],
        )  # fmt: skip
        self.compute_us = s(
            "nv_inference_compute_infer_duration_us", "counter",
            "Cumulative kernel time (assembly, kernel, split) of the batches requests ran in, microseconds.",
            ["model", "version"],
        )  # fmt: skip
        self.pending = s(
            "nv_inference_pending_request_count", "gauge",
            "Requests waiting in the batcher's queue, by op.", ["model", "version"],
        )  # fmt: skip
        self._series = (
            self.success, self.failure, self.count, self.exec_count,
            self.request_us, self.queue_us, self.compute_us, self.pending,
        )  # fmt: skip

        # Triton has no *_created series; nor do we (a process-wide switch of the library).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = r = CollectorRegistry()
        self.request_hist = Histogram(
            "nv_inference_request_duration_histogram_us",
            "Time from arrival at the engine to the answer, microseconds.",
            ["model", "version", "transport"], buckets=_US_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_hist = Histogram(
            "nv_inference_queue_duration_histogram_us",
            "Time a request waited in the batcher's queue, microseconds.",
            ["model", "version"], buckets=_US_BUCKETS, registry=r,
        )  # fmt: skip
        self.compute_hist = Histogram(
            "nv_inference_compute_infer_duration_histogram_us",
            "Kernel time of the batch a request ran in, microseconds.",
            ["model", "version"], buckets=_US_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_rows = Histogram(
            "nv_inference_batch_size_rows",
            "Rows (dim 0, or requests for elementwise ops) per kernel call.",
            ["model", "version"], buckets=_SIZE_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_requests = Histogram(
            "nv_inference_batch_size_requests", "Requests per kernel call.",
            ["model", "version"], buckets=_SIZE_BUCKETS, registry=r,
        )  # fmt: skip
        # Created by the first scrape on a CUDA device: a CPU server shows no GPU families
        # (a labelled gauge would render its HELP and TYPE lines even with no samples).
        self.gpu_memory_used: Gauge | None = None
        self.gpu_memory_total: Gauge | None = None

    # -- recording ------------------------------------------------------------------

    def answered(self, op: str, transport: str, outcome: str, duration_s: float) -> None:
        if outcome == "success":
            self.success.add((op, VERSION, transport))
        else:
            self.failure.add((op, VERSION, transport, outcome))
        self.request_us.add((op, VERSION, transport), duration_s * 1e6)
        self.request_hist.labels(op, VERSION, transport).observe(duration_s * 1e6)

    def enqueued(self, op: str) -> None:
        self.pending.add((op, VERSION), 1)

    def dequeued(self, op: str, count: int = 1) -> None:
        self.pending.add((op, VERSION), -count)

    def batch(self, op: str, requests: int, rows: int) -> None:
        self.exec_count.add((op, VERSION))
        self.count.add((op, VERSION), requests)
        self.batch_rows.labels(op, VERSION).observe(rows)
        self.batch_requests.labels(op, VERSION).observe(requests)

    def queued(self, request: OpRequest, queue_s: float, compute_s: float) -> None:
        op = request.spec.name
        self.queue_us.add((op, VERSION), queue_s * 1e6)
        self.compute_us.add((op, VERSION), compute_s * 1e6)
        self.queue_hist.labels(op, VERSION).observe(queue_s * 1e6)
        self.compute_hist.labels(op, VERSION).observe(compute_s * 1e6)

    def refresh_device(self, device: str) -> None:
        """Read CUDA memory just before a scrape (cheap; nothing to do on CPU)."""
        import torch

        if not device.startswith("cuda") or not torch.cuda.is_available():
            return
        index = torch.device(device).index or 0
        uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", index))
        if self.gpu_memory_used is None or self.gpu_memory_total is None:
            (used, used_doc), (total, total_doc) = GPU_GAUGES
            self.gpu_memory_used = Gauge(used, used_doc, ["gpu_uuid"], registry=self.registry)
            self.gpu_memory_total = Gauge(total, total_doc, ["gpu_uuid"], registry=self.registry)
        self.gpu_memory_used.labels(uuid).set(torch.cuda.memory_allocated(index))
        self.gpu_memory_total.labels(uuid).set(torch.cuda.get_device_properties(index).total_memory)

    def families(self) -> list[tuple[str, str, tuple[str, ...], str]]:
        """(name, type, labels, help) of every family this server can expose, the CUDA
        ones included (for the README's metrics table, docs_gen.py)."""
        out: list[tuple[str, str, tuple[str, ...], str]] = []
        # Every collector attribute, in the order they are declared: one added later is
        # listed without a change here.
        for value in vars(self).values():
            if isinstance(value, _Series):
                out.append((value.name, value.kind, value.labels, value.doc))
            elif isinstance(value, MetricWrapperBase):
                out.append((value._name, str(value._type), tuple(value._labelnames), value._documentation))
        if self.gpu_memory_used is None:
            out += [(name, "gauge", ("gpu_uuid",), doc) for name, doc in GPU_GAUGES]
        return out

    def render(self) -> bytes:
        out: list[str] = []
        for series in self._series:
            series.render(out)
        return "".join(out).encode() + generate_latest(self.registry)
