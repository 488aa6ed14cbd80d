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
    max_binary_body_bytes: int = Field(
        64 * MiB, gt=0, description="Largest HTTP body for V2 binary-extension requests."
    )
    grpc_max_message_bytes: int = Field(64 * MiB, gt=0, description="Largest gRPC message, received or sent.")
    max_tensor_elements: int = Field(
        16 * MiB,
        gt=0,
        description="Largest element count of any one tensor (inputs and init shapes); 413 past it.",
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
        "arrival (microseconds); an idle device takes work at once.",
    )
    max_queue_size: int = Field(1024, ge=1, description="Most requests waiting; 429 past it.")
    max_batches_in_flight: int = Field(2, ge=1, description="Batches handed to the device at once.")
    request_timeout_s: float = Field(
        30.0, gt=0, description="A request still queued after this long answers 504 and never runs."
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On SIGTERM, longest wait for queued and running work before exit."
    )
