"""Running the plan: every cell (server x transport x batching x concurrency) with the
load generator that suits it, the floors beside them, each row printed as measured."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gradserve.bench.loadgen import LoadSpec, PyLoad
from gradserve.bench.perf_analyzer import perf_analyzer_can_drive, perf_analyzer_input_data, run_perf_analyzer
from gradserve.bench.report import format_row_line
from gradserve.bench.results import Row
from gradserve.bench.servers import Server
from gradserve.bench.workloads import (
    LARGE_BYTES,
    LARGE_OP,
    NOOP_PREFIX,
    SMALL_OP,
    InputTensor,
    Work,
    large_inputs,
    measure_torch,
    native_small_body,
    shm_body,
    shm_regions,
    small_inputs,
    v2_binary_body,
)

# transport -> V2 protocol (perf_analyzer's -i)
PROTOCOL = {"v2": "http", "grpc": "grpc", "grpc-stream": "grpc", "shm": "http"}


@dataclass
class Plan:
    """What to measure, from the command line."""

    duration_s: float
    concurrency: list[int]
    large_concurrency: list[int]
    transports: list[str]
    batching: list[str]
    sections: list[str]
    floors: bool
    torch: bool
    perf_analyzer: Path | None
    large_loadgen: str = "python"


class Bench:
    """Runs the plan's cells and collects rows."""

    def __init__(self, plan: Plan, workdir: Path, load_procs: int) -> None:
        self.plan = plan
        self.workdir = workdir
        self.rows: list[Row] = []
        self._pyload: PyLoad | None = None
        self._load_procs = load_procs

    @property
    def pyload(self) -> PyLoad:
        if self._pyload is None:
            self._pyload = PyLoad(self._load_procs)
        return self._pyload

    def close(self) -> None:
        if self._pyload is not None:
            self._pyload.close()

    def add(self, row: Row, section: str, target: str, transport: str, batching: str) -> None:
        row.section, row.target, row.transport, row.batching = section, target, transport, batching
        self.rows.append(row)
        print(format_row_line(row), flush=True)

    def run(self, servers: dict[str, Server], floor: Server | None, work: Work) -> None:
        if "small" in self.plan.sections:
            self._small(servers, floor, work)
        if "large" in self.plan.sections:
            self._large(servers, floor, work)

    def v2_cell(
        self,
        server: Server,
        protocol: str,
        model: str,
        work: Work,
        concurrency: int,
        inputs: list[InputTensor],
        outputs: list[str],
        allow_pa: bool = True,
        stream: bool = False,
    ) -> Row:
        """One V2 cell over HTTP or gRPC (``stream``: on ModelStreamInfer streams):
        perf_analyzer if there is one (and it can send the model's inputs), else the
        Python load generator."""
        pa = self.plan.perf_analyzer
        duration = self.plan.duration_s
        op = model.removeprefix(NOOP_PREFIX)
        if allow_pa and pa is not None and perf_analyzer_can_drive(work.model_metadata(op)):
            data = self.workdir / f"pa-data-{model}.json"
            shape_args = perf_analyzer_input_data(data, work.model_config(op), inputs)
            if stream:
                shape_args.append("--streaming")
            target = server.grpc if protocol == "grpc" else server.http.removeprefix("http://")
            assert target is not None
            return run_perf_analyzer(
                pa, protocol, target, model, shape_args, concurrency, duration, server.pid, self.workdir
            )
        if protocol == "grpc":
            assert server.grpc is not None
            kind = "grpc-stream" if stream else "grpc"
            spec = LoadSpec(kind, server.grpc, model=model, inputs=inputs, outputs=outputs)
        else:
            body, headers = v2_binary_body(inputs, outputs)
            spec = LoadSpec("http", f"{server.http}/v2/models/{model}/infer", body, headers)
        return self.pyload.run(spec, concurrency, duration, server.pid)

    def _gradserve_cells(
        self, servers: dict[str, Server], transports: list[str], concurrency: list[int]
    ) -> Iterator[tuple[str, str, Server, int]]:
        """(transport, batching, server, concurrency) of each gradserve cell, in table order."""
        for transport in transports:
            for batching, server in servers.items():
                if transport in ("grpc", "sdk-grpc") and server.grpc is None:
                    continue
                for c in concurrency:
                    yield transport, batching, server, c

    def _floor_cells(
        self,
        floor: Server,
        section: str,
        op: str,
        work: Work,
        concurrency: int,
        inputs: list[InputTensor],
        noop_outputs: list[str],
        op_outputs: list[str],
        allow_pa: bool,
    ) -> None:
        """The do-nothing floor, then the op floor, over V2 binary HTTP."""
        for target, model, outputs in (
            ("floor no-op", NOOP_PREFIX + op, noop_outputs),
            ("floor op", op, op_outputs),
        ):
            row = self.v2_cell(floor, "http", model, work, concurrency, inputs, outputs, allow_pa)
            self.add(row, section, target, "v2", "-")

    def _small(self, servers: dict[str, Server], floor: Server | None, work: Work) -> None:
        plan, d = self.plan, self.plan.duration_s
        if plan.torch:
            self.add(measure_torch("small", work, d), "small", "torch", "in-process", "-")
        inputs = small_inputs()
        if floor is not None:
            self._small_floors(floor, work, inputs)
        native_body = native_small_body(work)
        transports = [t for t in plan.transports if t != "shm"]  # 8x10 fits in any request
        for transport, batching, server, c in self._gradserve_cells(servers, transports, plan.concurrency):
            if transport.startswith("sdk-"):
                self._sdk_cells(server, transport, batching, c)
                continue
            if transport == "native":
                url = f"{server.http}/v1/losses/{SMALL_OP}"
                spec = LoadSpec("http", url, native_body, {"Content-Type": "application/json"})
                row = self.pyload.run(spec, c, d, server.pid)
            else:
                row = self.v2_cell(
                    server,
                    PROTOCOL[transport],
                    SMALL_OP,
                    work,
                    c,
                    inputs,
                    work.small_outputs,
                    stream=transport == "grpc-stream",
                )
            self.add(row, "small", "gradserve", transport, batching)

    def _sdk_cells(self, server: Server, transport: str, batching: str, concurrency: int) -> None:
        """The SDK's sync client in threads, then its async client in tasks (bench/sdk.py),
        each noted with its ratio to perf_analyzer's row of the same cell, if measured."""
        # Imported here: ``python -m gradserve.bench.sdk`` (the cell's child process)
        # must not find its module already imported by this package's __init__.
        from gradserve.bench.sdk import TRANSPORT_CLIENTS, run_sdk_cell

        target = server.http if transport == "sdk-http" else server.grpc
        assert target is not None
        pa_transport = "v2" if transport == "sdk-http" else "grpc"
        for kind in TRANSPORT_CLIENTS[transport]:
            row = run_sdk_cell(kind, target, concurrency, self.plan.duration_s, server.pid)
            for ref in self.rows:
                if (
                    (ref.target, ref.transport, ref.batching, ref.concurrency, ref.loadgen)
                    == ("gradserve", pa_transport, batching, concurrency, "perf_analyzer")
                    and ref.req_s > 0
                    and not row.note
                ):
                    row.note = f"{row.req_s / ref.req_s:.2f}x perf_analyzer"
            self.add(row, "small", "gradserve", transport, batching)

    def _small_floors(self, floor: Server, work: Work, inputs: list[InputTensor]) -> None:
        """The floors at each concurrency, with each load generator the gradserve rows
        use, so every ratio compares servers driven by the same client."""
        plan = self.plan
        pa_small = plan.perf_analyzer is not None and perf_analyzer_can_drive(work.model_metadata(SMALL_OP))
        if plan.perf_analyzer is not None and not pa_small:
            print(
                f"note: perf_analyzer cannot drive {SMALL_OP}: its metadata lists a 0-d input (shape []), "
                "which perf_analyzer 2.50 cannot send; its V2 rows use the Python load generator.",
                flush=True,
            )
        outputs = work.small_outputs
        for c in plan.concurrency:
            if "native" in plan.transports or not pa_small:
                self._floor_cells(floor, "small", SMALL_OP, work, c, inputs, outputs, outputs, allow_pa=False)
            if pa_small and ({"v2", "grpc"} & set(plan.transports)):
                self._floor_cells(floor, "small", SMALL_OP, work, c, inputs, [], outputs, allow_pa=True)

    def _large(self, servers: dict[str, Server], floor: Server | None, work: Work) -> None:
        plan, d = self.plan, self.plan.duration_s
        metadata = work.model_metadata(LARGE_OP)
        pa_large = plan.large_loadgen == "perf_analyzer"
        if pa_large:  # perf_analyzer asks for every output the metadata lists
            work.large_outputs = [o["name"] for o in metadata.get("outputs", [])] or work.large_outputs
        if plan.torch:
            self.add(measure_torch("large", work, d), "large", "torch", "in-process", "-")
        dims = metadata.get("inputs", [{}])[0].get("shape")
        inputs = large_inputs(len(dims) if dims else 2)
        if floor is not None:
            for c in plan.large_concurrency:
                self._floor_cells(floor, "large", LARGE_OP, work, c, inputs, [], work.large_outputs, pa_large)
        transports = [t for t in plan.transports if t != "native" and not t.startswith("sdk-")]
        for transport, batching, server, c in self._gradserve_cells(
            servers, transports, plan.large_concurrency
        ):
            if transport == "shm":
                row = self._shm_cell(server, inputs, work.large_outputs, c)
            else:
                row = self.v2_cell(
                    server,
                    PROTOCOL[transport],
                    LARGE_OP,
                    work,
                    c,
                    inputs,
                    work.large_outputs,
                    pa_large,
                    stream=transport == "grpc-stream",
                )
            self.add(row, "large", "gradserve", transport, batching)

    def _shm_cell(
        self, server: Server, inputs: list[InputTensor], outputs: list[str], concurrency: int
    ) -> Row:
        """The large op with its tensors in system shared memory: the input written once
        into a registered region, every output written by the server into another;
        each request is a small JSON body naming them (py-http)."""
        with shm_regions(server.http, inputs, outputs, LARGE_BYTES) as regions:
            body = shm_body(inputs, outputs, regions, LARGE_BYTES)
            url = f"{server.http}/v2/models/{LARGE_OP}/infer"
            spec = LoadSpec("http", url, body, {"Content-Type": "application/json"})
            return self.pyload.run(spec, concurrency, self.plan.duration_s, server.pid)
