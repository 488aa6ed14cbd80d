"""Server-rendered plots of the lab (API.md section 6): query -> numbers -> image.

Flow position: rest/lab.py (GET /v1/lab/plots/<kind>) -> **plots** -> engine (the
numbers, through the same validation, queue and device as any request) -> figures.py
in the render worker process -> bytes. No transport is imported here: a query arrives
as a mapping of strings and leaves as bytes and a media type.

- Rendering runs in one worker process (lab/render_worker.py), not on the event loop
  and not on a thread: matplotlib is not thread-safe (its font, text-layout and rc
  caches are process-wide state), and a figure takes 0.5-2 s of mostly pure Python,
  which on a thread holds the GIL against the event loop (measured: loop stalls of up
  to 60 ms while a render thread ran); in the worker, small inference requests keep
  their 2-4 ms (tests/e2e/test_lab_plots.py). One process, one job at a time
  (a lock), serializes renders as matplotlib needs and leaves the server's GIL alone.
  It starts with the first plot (a fresh interpreter: never a fork of a process that
  runs torch, gRPC and event-loop threads) and again if it dies.
- Identical queries (the same plot, the same query items) are answered from a bounded
  LRU cache, byte for byte; concurrent identical queries share one render. Every plot
  is deterministic (the lab op is seeded, seed 0 by default), so a cached image is
  always the one a new render would give.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pickle
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch

from gradserve.errors import InternalError, InvalidInput
from gradserve.lab import figures, render_worker
from gradserve.lab.figures import Format, Size

if TYPE_CHECKING:
    from gradserve.engine import Engine

log = logging.getLogger(__name__)

T = TypeVar("T")
Query = Mapping[str, str]

# Image bounds: enough for a poster panel, small enough that one render stays ~1 s and
# a PNG under a few MB.
MIN_PX, MAX_PX = 200, 3000
MIN_DPI, MAX_DPI = 50, 300
# The cache: entries and total bytes (PNG ~100 KB, SVG ~300 KB at the default sizes).
CACHE_ENTRIES = 128
CACHE_BYTES = 64 * 1024 * 1024
# activation and margin plots: sample points along x.
MIN_POINTS, MAX_POINTS, DEFAULT_POINTS = 2, 4001, 401
X_LIMIT = 1000.0
# Activations that the activation plot draws: the pointwise ones of API.md 1.1.
PLOT_ACTIVATIONS = (
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "elu",
    "selu",
    "gelu",
    "silu",
    "softplus",
    "mish",
)
# Query params every plot takes; the rest are the plot's own.
SIZE_PARAMS = ("format", "img_width", "img_height", "dpi")
# The render worker imports gradserve from where this process did (tests and source
# checkouts run it from service/ without installing it).
SERVICE_ROOT = str(Path(__file__).resolve().parents[2])


@dataclasses.dataclass(frozen=True)
class Image:
    """A rendered plot."""

    body: bytes
    media_type: str
    # Whether it came from the cache (answered as the X-Cache header).
    cached: bool = False


# ---------------------------------------------------------------- query parsing


def _number(query: Query, name: str, default: float, lo: float, hi: float, *, integer: bool = False) -> float:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        if len(raw) > 40:  # int() of a long digit string is quadratic
            raise ValueError
        value: float = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise InvalidInput(
            f"query param {name!r}: expected {kind}, got {raw[:40]!r}", code="bad_param"
        ) from None
    if not lo <= value <= hi:  # NaN fails this too
        raise InvalidInput(f"query param {name!r}: {raw[:40]} is outside [{lo:g}, {hi:g}]", code="bad_param")
    return value


def _size(query: Query, default_width: int, default_height: int) -> Size:
    fmt = query.get("format", "png")
    if fmt not in figures.MEDIA_TYPES:
        raise InvalidInput(f"query param 'format': {fmt[:40]!r} is not one of 'png', 'svg'", code="bad_param")
    width = int(_number(query, "img_width", default_width, MIN_PX, MAX_PX, integer=True))
    height = int(_number(query, "img_height", default_height, MIN_PX, MAX_PX, integer=True))
    dpi = int(_number(query, "dpi", 100, MIN_DPI, MAX_DPI, integer=True))
    kind: Format = "svg" if fmt == "svg" else "png"
    return Size(width, height, dpi, kind)


def _check_names(query: Query, allowed: set[str], plot: str) -> None:
    unknown = sorted(set(query) - allowed)
    if unknown:
        shown = ", ".join(repr(n[:40]) for n in unknown[:8])
        raise InvalidInput(
            f"plot {plot!r}: unknown query param(s) {shown}; it takes {', '.join(map(repr, sorted(allowed)))}",
            code="unknown_field",
        )


def _range(query: Query, default_low: float, default_high: float) -> tuple[float, float, int]:
    low = _number(query, "low", default_low, -X_LIMIT, X_LIMIT)
    high = _number(query, "high", default_high, -X_LIMIT, X_LIMIT)
    if not low < high:
        raise InvalidInput(
            f"query params 'low', 'high': low must be less than high (got {low:g}, {high:g})",
            code="bad_param",
        )
    points = int(_number(query, "points", DEFAULT_POINTS, MIN_POINTS, MAX_POINTS, integer=True))
    return low, high, points


def _numpy(outputs: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: t.numpy() for name, t in outputs.items()}


# ---------------------------------------------------------------- plots


class Plots:
    """The three plots of API.md 6, with their cache and render worker."""

    def __init__(
        self, engine: Engine, *, cache_entries: int = CACHE_ENTRIES, cache_bytes: int = CACHE_BYTES
    ) -> None:
        self.engine = engine
        self.cache_entries = cache_entries
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[str, tuple[tuple[str, str], ...]], Image] = OrderedDict()
        self._cached_bytes = 0
        self._rendering: dict[tuple[str, tuple[tuple[str, str], ...]], asyncio.Task[Image]] = {}
        self._worker: asyncio.subprocess.Process | None = None
        self._worker_lock = asyncio.Lock()
        self.renders = 0  # figures drawn (cache misses), for tests and curiosity

    # -- the plots ----------------------------------------------------------------

    async def activation_stats(self, query: Query) -> Image:
        """The histogram grid and mean/std curves of one activation_stats run; query
        params are the op's params plus the image's size."""
        spec = self.engine.registry.get("activation_stats")
        _check_names(query, {*spec.param_index, *SIZE_PARAMS}, "activation_stats")
        size = _size(query, 1200, 900)

        async def make() -> Image:
            params = {k: v for k, v in query.items() if k not in SIZE_PARAMS}
            wanted = ("mean", "std", "hist", "edges", "grad_std")
            outputs = await self.engine.infer(
                "activation_stats", {}, params, outputs=wanted, lenient=True, transport="plots"
            )
            full = {p.name: p.default for p in spec.params} | dict(params)
            return await self._render("activation_stats", _numpy(outputs), _stats_title(full), size)

        return await self._cached("activation_stats", query, make)

    async def activation(self, query: Query) -> Image:
        """An activation (``op``, with its own params) and its derivative over [low, high]."""
        op = query.get("op", "tanh")
        if op not in PLOT_ACTIVATIONS:
            raise InvalidInput(
                f"query param 'op': {op[:40]!r} is not one of {', '.join(map(repr, PLOT_ACTIVATIONS))}",
                code="bad_param",
            )
        spec = self.engine.registry.get(op, "activations")
        _check_names(query, {"op", "low", "high", "points", *spec.param_index, *SIZE_PARAMS}, "activation")
        low, high, points = _range(query, -5.0, 5.0)
        size = _size(query, 800, 500)

        async def make() -> Image:
            params = {k: v for k, v in query.items() if k in spec.param_index}
            x = torch.linspace(low, high, points, dtype=torch.float64)
            # The upstream gradient defaults to ones: grad_x is the derivative itself.
            out = await self.engine.infer(op, {"x": x}, params, grad=True, lenient=True, transport="plots")
            return await self._render(
                "activation", x.numpy(), out["y"].numpy(), out["grad_x"].numpy(), op, size
            )

        return await self._cached("activation", query, make)

    async def margin(self, query: Query) -> Image:
        """Hinge and softmax cross-entropy of one sample against its correct-class margin."""
        _check_names(query, {"classes", "delta", "low", "high", "points", *SIZE_PARAMS}, "margin")
        classes = int(_number(query, "classes", 3, 2, 100, integer=True))
        delta = _number(query, "delta", 1.0, 0.0, 100.0)
        low, high, points = _range(query, -3.0, 5.0)
        size = _size(query, 800, 500)

        async def make() -> Image:
            margins = torch.linspace(low, high, points, dtype=torch.float64)
            # Row i: the correct class (0) scores margins[i], every other class 0.
            scores = torch.zeros(points, classes, dtype=torch.float64)
            scores[:, 0] = margins
            target = torch.zeros(points, dtype=torch.int64)
            inputs = {"input": scores, "target": target}
            hinge, ce = await asyncio.gather(
                self.engine.infer("hinge", inputs, {"margin": delta, "reduction": "none"}, transport="plots"),
                self.engine.infer("cross_entropy", inputs, {"reduction": "none"}, transport="plots"),
            )
            losses = {"hinge": hinge["loss"].numpy(), "cross_entropy": ce["loss"].numpy()}
            return await self._render("margin", margins.numpy(), losses, delta, classes, size)

        return await self._cached("margin", query, make)

    # -- cache and render worker -------------------------------------------------

    async def _cached(self, plot: str, query: Query, make: Callable[[], Awaitable[Image]]) -> Image:
        key = (plot, tuple(sorted(query.items())))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return dataclasses.replace(hit, cached=True)
        task = self._rendering.get(key)
        if task is None:
            task = asyncio.ensure_future(make())
            self._rendering[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        # Shielded: a client that leaves does not cancel a render others may share.
        return await asyncio.shield(task)

    def _finished(self, key: tuple[str, tuple[tuple[str, str], ...]], task: asyncio.Task[Image]) -> None:
        self._rendering.pop(key, None)
        if task.cancelled() or task.exception() is not None:
            return
        image = task.result()
        if len(image.body) > self.cache_bytes:
            return
        self._cache[key] = image
        self._cached_bytes += len(image.body)
        while len(self._cache) > self.cache_entries or self._cached_bytes > self.cache_bytes:
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= len(dropped.body)

    async def _render(self, figure: str, *args: Any) -> Image:
        """Draw ``figures.<figure>(*args)`` in the worker process (the last arg: Size)."""
        size: Size = args[-1]
        job = render_worker.frame((figure, args))
        async with self._worker_lock:  # one job at a time on its pipes
            try:
                answer = await self._ask(job)
            except (OSError, EOFError, asyncio.IncompleteReadError):
                # The worker died (killed, out of memory): start a fresh one, once.
                log.warning("plot render worker died; starting a new one")
                await self._stop_worker()
                answer = await self._ask(job)
        status, value = answer
        if status != "ok":
            log.error("plot %s failed to render: %s", figure, value)
            raise InternalError(f"plot {figure!r}: internal error while drawing")
        self.renders += 1
        assert isinstance(value, bytes)
        return Image(value, figures.MEDIA_TYPES[size.format])

    async def _ask(self, job: bytes) -> tuple[str, object]:
        worker = await self._start_worker()
        assert worker.stdin is not None and worker.stdout is not None
        worker.stdin.write(job)
        await worker.stdin.drain()
        header = await worker.stdout.readexactly(render_worker.HEADER_BYTES)
        body = await worker.stdout.readexactly(int.from_bytes(header, "little"))
        answer: tuple[str, object] = pickle.loads(body)  # our own child's answer
        return answer

    async def _start_worker(self) -> asyncio.subprocess.Process:
        if self._worker is not None and self._worker.returncode is None:
            return self._worker
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [SERVICE_ROOT, os.environ.get("PYTHONPATH")])),
        }
        self._worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gradserve.lab.render_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        return self._worker

    async def _stop_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None or worker.returncode is not None:
            return
        if worker.stdin is not None:
            worker.stdin.close()  # end of its input: it exits
        try:
            await asyncio.wait_for(worker.wait(), 5.0)
        except TimeoutError:
            worker.kill()
            await worker.wait()

    async def aclose(self) -> None:
        """Stop the render worker (at app shutdown)."""
        for task in list(self._rendering.values()):
            task.cancel()
        with contextlib.suppress(ProcessLookupError):
            await self._stop_worker()


def _stats_title(params: Mapping[str, Any]) -> str:
    """ "tanh, normal(std=0.01): 10 layers of 500 units, batch 1000, seed 0"."""
    init_args = ", ".join(
        f"{name}={params[name]}"
        for name in ("std", "mean", "mode", "gain", "nonlinearity", "negative_slope", "low", "high", "a", "b")
        if params.get(name) is not None
    )
    return (
        f"{params['activation']}, {params['init']}({init_args}): {params['depth']} layers of "
        f"{params['width']} units, batch {params['batch']}, seed {params['seed']}"
    )
