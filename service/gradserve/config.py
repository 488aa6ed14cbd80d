"""Settings: the one configuration object, built once at start and passed down.

Every field is an environment variable ``GRADSERVE_<NAME>`` and a CLI flag
``--<name-with-dashes>`` of ``gradserve serve`` (cli.py derives the flags from here).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """gradserve settings; the field docs are the --help text and the README table."""

    model_config = SettingsConfigDict(env_prefix="GRADSERVE_", extra="ignore")

    host: str = Field("0.0.0.0", description="Address both servers bind to.")
    http_port: int = Field(8000, ge=0, le=65535, description="HTTP port (REST /v1, /v2, /metrics).")
    grpc_port: int = Field(8001, ge=0, le=65535, description="gRPC port (0 disables gRPC).")
    grpc_enabled: bool = Field(True, description="Serve gRPC beside HTTP.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")

    max_body_bytes: int = Field(
        64 * MiB, gt=0, description="Largest HTTP request body (JSON); 413 past it, before reading it all."
    )
    # 0 follows max_body_bytes, so lowering that one bounds every HTTP body; set this
    # to take large binary tensors while JSON bodies (parsed whole) stay small.
    max_binary_body_bytes: int = Field(
        0,
        ge=0,
        description="Largest HTTP body for V2 binary-extension requests; 0: max_body_bytes.",
    )
    grpc_max_message_bytes: int = Field(64 * MiB, gt=0, description="Largest gRPC message, received or sent.")
    # HTTP/2 streams a client may open on one connection (grpcio's own default is
    # unlimited): bounds what one connection can make the server hold at once.
    # As high as the server-wide RPC cap: grpcio refuses streams past it (RST_STREAM
    # REFUSED_STREAM) rather than queueing them, and one client channel bursting 2,000
    # calls is ordinary use. grpc_max_concurrent_rpcs is what bounds the server.
    grpc_max_concurrent_streams: int = Field(
        4096, ge=1, description="Most concurrent gRPC calls (HTTP/2 streams) on one connection."
    )
    # grpcio itself refuses a call over this cap, before its request is read or any
    # handler runs, with RESOURCE_EXHAUSTED "Concurrent RPC limit exceeded!" and no
    # gradserve-error-code trailer (it never reaches gradserve). Nothing was started, so
    # a retry is safe. Far above max_queue_size by default: the engine's own queue_full
    # refusal (with its trailer) comes first under ordinary overload.
    grpc_max_concurrent_rpcs: int = Field(
        4096,
        ge=0,
        description="Most gRPC calls handled at once over all connections; past it grpcio answers "
        "RESOURCE_EXHAUSTED (Concurrent RPC limit exceeded) at once, nothing started; 0: no cap.",
    )
    # ModelStreamInfer runs each message of a stream as its own request, concurrently;
    # past this many unanswered ones the stream's next message is not read, so HTTP/2
    # flow control holds the client back instead of the server queueing its work.
    grpc_stream_max_in_flight: int = Field(
        256,
        ge=1,
        description="Most requests of one gRPC ModelStreamInfer stream being run at once; the stream's "
        "next message is read when one of them is answered.",
    )
    shared_memory_enabled: bool = Field(
        True,
        description="Offer the system shared-memory extension (REST /v2/systemsharedmemory, gRPC "
        "SystemSharedMemory*); off: not advertised, and its routes and tensor parameters answer 400.",
    )
    # Each region holds an open file and a mapping until it is unregistered.
    shared_memory_max_regions: int = Field(
        256, ge=1, description="Most shared-memory regions registered at once; registering past it is 400."
    )
    # os.pwrite into a truncated object extends it; a store through the mapping is
    # SIGBUS, which ends the process. Inputs are read through the mapping either way, so
    # a client that truncates its own object mid-request can already do that while they
    # are read: this widens that window by the answer's copy (docs/benchmarks.md:
    # 16 MiB in 0.6 ms through the mapping against 2.3 ms with pwrite).
    shared_memory_write_through_mapping: bool = Field(
        False,
        description="Write shared-memory outputs by copying through the server's mapping instead of "
        "os.pwrite: about 3x faster for large outputs, but a client that truncates its region's "
        "object while its answer is written ends the server (SIGBUS). Only for trusted clients.",
    )
    max_tensor_elements: int = Field(
        16 * MiB,
        gt=0,
        description="Largest element count of any one tensor (inputs and init shapes); 413 past it.",
    )
    max_tensor_dims: int = Field(
        16,
        ge=1,
        le=64,
        description="Most dimensions of any one tensor or init shape; 413 past it.",
    )
    max_json_response_elements: int = Field(
        32 * MiB,
        ge=1,
        description="Most elements (all outputs, zero dims counted as 1) of an answer encoded as JSON; "
        "413 past it, before the JSON is built. Binary answers (V2 binary, gRPC) are bounded by bytes.",
    )
    # activation_stats (the lab) has no tensors to bound it: its params set its cost.
    # 1e10 is 4x the lecture's net (10 x 500^2 x 1000), 1-6 s of one CPU thread by
    # shape, and bounds what it holds for the backward pass to ~0.5 GB (ops/lab.py).
    lab_max_work: int = Field(
        10_000_000_000,
        ge=1,
        description="Largest activation_stats request, counted as depth * width^2 * batch (its forward "
        "multiply-adds); 413 past it.",
    )

    device: str = Field("auto", description="Compute device: auto, cpu, cuda or cuda:N.")
    torch_threads: int = Field(
        1, ge=1, description="torch intra-op threads of the compute worker (1 leaves a core for I/O)."
    )

    inline_below_elements: int = Field(
        32_768,
        ge=0,
        description="On the CPU, a batch with fewer elements than this (all its tensors) runs on the "
        "event loop instead of the compute thread, whose hand-off costs more than a tiny kernel; 0: never.",
    )

    batching: bool = Field(True, description="Dynamic batching on or off.")
    max_batch_rows: int = Field(256, ge=1, description="Most rows (dim 0) or requests in one batch.")
    max_batch_elements: int = Field(
        262_144, ge=1, description="Most elements of the primary input in one batch."
    )
    large_request_elements: int = Field(
        65_536,
        ge=1,
        description="A request with more elements than this runs alone (copying it costs more than batching saves).",
    )
    max_queue_delay_us: int = Field(
        500,
        ge=0,
        description="While a batch runs, longest the next one waits for more requests after its first "
        "arrival (microseconds); an idle device takes work at once, except gRPC calls arriving within this "
        "delay of each other (docs/architecture.md).",
    )
    max_queue_size: int = Field(1024, ge=1, description="Most requests waiting; 429 past it.")
    max_batches_in_flight: int = Field(2, ge=1, description="Batches handed to the device at once.")
    request_timeout_s: float = Field(
        30.0, gt=0, description="A request still queued after this long answers 504 and never runs."
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On SIGTERM, longest wait for queued and running work before exit."
    )
    malloc_mmap_threshold_bytes: int = Field(
        0,
        ge=0,
        le=32 * MiB,
        description="glibc: serve allocations of at least this many bytes with their own mmap, "
        "returned when freed (less memory held after load, slower large tensors; malloc.py); "
        "0: glibc's adaptive default.",
    )
    malloc_trim_idle_s: float = Field(
        5.0,
        ge=0,
        description="glibc: after this many seconds with the process quiet following a rise of its memory, "
        "give the heap memory freed by the load back to the OS (malloc_trim, off the event loop; malloc.py); "
        "0: never.",
    )
    drain_delay_s: float = Field(
        0.0,
        ge=0,
        description="On SIGTERM, how long readiness answers 503 while requests are still served, so load "
        "balancers stop routing here before new work is refused (then the drain begins).",
    )
    # A request sent on a keep-alive connection at the moment the server closes it is
    # lost (the client reads a reset or an empty answer). Only the side that closes
    # first is safe, so the client must: the server keeps idle connections longer than
    # clients' pools do (httpx 5 s, aiohttp 15 s, the SDK 4 s) and longer than the idle
    # timeout of a proxy in front (AWS ALB 60 s), nginx's 75 s convention. uvicorn's own
    # default of 5 s equals httpx's pool expiry, which is the race issue 8 measured.
    # An int: uvicorn types timeout_keep_alive as int.
    http_keep_alive_s: int = Field(
        75,
        ge=1,
        description="Seconds an idle HTTP keep-alive connection stays open (clients should close theirs sooner).",
    )

    # Admission and connection limits (rest/fastpath.py, rest/connections.py): refusing
    # costs something too, so refusals are decided before a body is read or parsed.
    http_max_requests_in_flight: int = Field(
        1024,
        ge=1,
        description="Most HTTP inference requests accepted at once (being read, decoded, queued, run or "
        "answered); past it, and while the batcher's queue is full, 429 with Retry-After before the body is read.",
    )
    http_admission_wait_s: float = Field(
        1.0,
        ge=0,
        description="How long an HTTP inference request past http_max_requests_in_flight waits (in order, "
        "its body unread) for a slot before 429; 0: refuse at once.",
    )
    http_max_connections: int = Field(
        2048,
        ge=1,
        description="Most open HTTP connections; a request on a connection past it answers 503 with "
        "Retry-After and the connection closes. Keep it under the process's open-file limit.",
    )
    # httptools joins a header's pieces by bytes concatenation: one 99 MiB header line
    # cost 7.7 s of CPU (quadratic) before the 401, with the event loop stalled.
    http_max_header_bytes: int = Field(
        65_536,
        ge=1024,
        description="Largest request head (request line and headers); past it 431 and close.",
    )
    http_header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest time from a request's first byte to the end of its headers; past it 408 and close.",
    )
    http_body_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Longest time from the end of a request's headers to the end of its body; past it 408 "
        "and close (a 64 MiB body needs over 1.1 MB/s at the default).",
    )
    http_write_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Longest time an answer may wait for a client that does not read it; past it the "
        "connection closes and the answer is dropped.",
    )

    # Guards and observability (docs/security.md). Keys: auth.py; TLS: cli.py (HTTP)
    # and grpc/server.py; request ids and spans: tracing.py; log lines: logs.py.
    api_keys: str = Field(
        "",
        repr=False,  # a secret: kept out of reprs (and so out of logs and tracebacks)
        description="API keys, comma-separated; when any is set (here or in api_keys_file), /v1, /v2 and "
        "gRPC need `Authorization: Bearer <key>`. Prefer the environment or the file: flags show in `ps`.",
    )
    api_keys_file: str = Field(
        "",
        description="A file of API keys, one per line (blank lines and # comments skipped), read at start.",
    )
    api_keys_on_probes: bool = Field(
        False,
        description="With keys set, require one on the probes too: /healthz, /readyz, /metrics, "
        "/v2/health/live and /ready, gRPC health, ServerLive and ServerReady (open by default).",
    )
    tls_cert: str = Field(
        "",
        description="PEM certificate (chain) for HTTP and gRPC; with tls_key both ports serve TLS only.",
    )
    tls_key: str = Field("", description="PEM private key of tls_cert.")
    tls_client_ca: str = Field(
        "",
        description="PEM CA bundle for mutual TLS: both ports refuse clients without a certificate it signed.",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text, or one JSON object per line (with the request id)."
    )
    access_log: bool = Field(
        True,
        description="One log line per request at INFO: request id, transport, op, status, batch size, "
        "queue, compute and total time (never tensor contents).",
    )
    otel_exporter: Literal["none", "console", "otlp"] = Field(
        "none",
        description="OpenTelemetry spans (transport, queue, batch, kernel): none, console (stdout), or "
        "otlp (gRPC, to OTEL_EXPORTER_OTLP_ENDPOINT; needs the otlp extra).",
    )

    def tls_problem(self) -> str | None:
        """What is wrong with the TLS settings, if anything (``gradserve serve`` checks at
        start). Not a pydantic validator: its error would echo every input, keys included."""
        if bool(self.tls_cert) != bool(self.tls_key):
            return "tls_cert and tls_key go together: set both or neither"
        if self.tls_client_ca and not self.tls_cert:
            return "tls_client_ca (mutual TLS) needs tls_cert and tls_key"
        return None
