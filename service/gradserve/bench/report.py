"""The report: each row's progress line, the table (ratios to the floor measured with the
same load generator at the same concurrency, and to in-process torch) as text or
markdown, and the machine it ran on."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

from gradserve.bench.results import Row
from gradserve.bench.workloads import LARGE_BYTES, LARGE_OP, SMALL_OP, MiB

TRANSPORT_LABEL = {
    "native": "native HTTP",
    "v2": "V2 binary HTTP",
    "grpc": "V2 gRPC",
    "grpc-stream": "V2 gRPC stream",
    "shm": "V2 HTTP + system shm",
    "sdk-http": "SDK V2 HTTP",
    "sdk-grpc": "SDK V2 gRPC",
}


def _throughput(r: Row) -> float:
    """req/s for small requests, MiB/s of request payload for the large tensor."""
    return r.req_s if r.section == "small" else r.req_s * LARGE_BYTES / MiB


def _loadgen_family(loadgen: str) -> str:
    return loadgen.split(" ")[0].replace("grpc.aio", "py-http").replace("grpc-stream", "py-http")


def _reference(rows: list[Row], row: Row, target: str) -> Row | None:
    """The floor row measured with the same load generator at the same concurrency."""
    for ref in rows:
        if (
            ref.section == row.section
            and ref.target == target
            and ref.concurrency == row.concurrency
            and _loadgen_family(ref.loadgen) == _loadgen_family(row.loadgen)
            and ref.req_s > 0
        ):
            return ref
    return None


def _ratio(value: float, ref: Row | None) -> str:
    if ref is None or value <= 0:
        return "-"
    return f"{value / ref.req_s:.2f}x"


def _fmt(x: float, digits: int = 2) -> str:
    return "-" if x != x else f"{x:.{digits}f}"  # NaN -> "-"


def table(rows: list[Row]) -> list[list[str]]:
    """Header + cells of the report: small rows first, then the large tensor's."""
    out: list[list[str]] = []
    torch_rows = {r.section: r for r in rows if r.target == "torch"}
    for section in ("small", "large"):
        sec = [r for r in rows if r.section == section]
        if not sec:
            continue
        unit = "req/s" if section == "small" else "MiB/s"
        floor = "floor op" if section == "small" else "floor no-op"
        out.append(
            [
                f"{SMALL_OP} 8x10" if section == "small" else f"{LARGE_OP} 16 MiB",
                "transport",
                "batch",
                "conc",
                unit,
                "p50 ms",
                "p99 ms",
                f"vs {floor}",
                "vs torch",
                "server CPU%",
                "loadgen CPU%",
                "load generator",
            ]
        )
        for r in sec:
            ref = _reference(rows, r, floor) if r.target not in ("torch", floor) else None
            torch_ref = torch_rows.get(section) if r.target != "torch" else None
            note = f" ({r.note})" if r.note else ""
            errs = f" [{r.errors} errors]" if r.errors else ""
            out.append(
                [
                    r.target,
                    TRANSPORT_LABEL.get(r.transport, r.transport),
                    r.batching,
                    str(r.concurrency),
                    f"{_throughput(r):,.0f}" + errs,
                    _fmt(r.p50_ms, 3 if r.p50_ms < 1 else 2),
                    _fmt(r.p99_ms, 3 if r.p99_ms < 1 else 2),
                    _ratio(r.req_s, ref),
                    _ratio(r.req_s, torch_ref),
                    _fmt(r.server_cpu, 0),
                    _fmt(r.loadgen_cpu, 0),
                    r.loadgen + note,
                ]
            )
    return out


def format_row_line(r: Row) -> str:
    """One row as a progress line, printed as soon as the cell is measured."""
    unit = "req/s" if r.section == "small" else "MiB/s"
    value = f"{_throughput(r):,.0f} {unit}"
    return (
        f"  {r.section:5} {r.target:11} {TRANSPORT_LABEL.get(r.transport, r.transport):14} "
        f"batch={r.batching:3} c={r.concurrency:<3} {value:>14}  p50={_fmt(r.p50_ms, 3)} ms "
        f"p99={_fmt(r.p99_ms, 3)} ms  server={_fmt(r.server_cpu, 0)}% loadgen={_fmt(r.loadgen_cpu, 0)}% "
        f"[{r.loadgen}]{' ' + r.note if r.note else ''}"
    )


def render_text(rows: list[Row]) -> str:
    lines: list[str] = []
    block: list[list[str]] = []

    def flush() -> None:
        if not block:
            return
        widths = [max(len(r[i]) for r in block) for i in range(len(block[0]))]
        for n, cells in enumerate(block):
            lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append("")
        block.clear()

    for cells in table(rows):
        if cells[1] == "transport":
            flush()
        block.append(cells)
    flush()
    return "\n".join(lines)


def render_markdown(rows: list[Row]) -> str:
    lines: list[str] = []
    for cells in table(rows):
        header = cells[1] == "transport"
        if header and lines:
            lines.append("")
        lines.append("| " + " | ".join(cells) + " |")
        if header:
            lines.append("|" + "|".join("---" for _ in cells) + "|")
    return "\n".join(lines) + "\n"


def machine_info() -> dict[str, str]:
    info = {"nproc": str(os.cpu_count()), "python": platform.python_version(), "os": platform.platform()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    with contextlib.suppress(ImportError):
        import torch

        info["torch"] = torch.__version__
    return info


def machine_line() -> str:
    return ", ".join(f"{k} {v}" for k, v in machine_info().items())
