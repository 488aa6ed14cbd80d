"""The executor: owns the compute device and runs kernels off the event loop.

Flow position: batcher -> executor -> ``assemble`` -> ``OpSpec.run`` -> ``disassemble``.
One worker thread per device: torch releases the GIL inside kernels, so the event loop
keeps serving I/O while a batch computes, and a single thread keeps kernel launches on
a device ordered. On the CPU a small batch (under ``inline_below_elements``) runs on
the event loop itself: the hand-off to the thread costs more than such a kernel. On CUDA a batch is assembled in pinned host memory, copied with one
non-blocking transfer, and its results come back with one synchronization.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from gradserve.config import Settings
from gradserve.errors import DeviceOutOfMemory, GradservError, InternalError
from gradserve.ops.layout import assemble, disassemble
from gradserve.ops.registry import DEVICE_PARAM, OpSpec

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda when a GPU is visible; an explicit cuda without one fails
    at start-up rather than on the first request."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")
    return device


class Executor:
    """Runs (possibly batched) kernel calls: on the device's worker thread, or inline."""

    def __init__(self, settings: Settings) -> None:
        self.device = resolve_device(settings.device)
        self.large_request_elements = settings.large_request_elements
        self.inline_below_elements = settings.inline_below_elements if self.device.type == "cpu" else 0
        torch.set_num_threads(settings.torch_threads)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"gradserve-{self.device}")

    async def run(
        self,
        spec: OpSpec,
        tensors: Sequence[Mapping[str, torch.Tensor]],
        params: Mapping[str, Any],
        want: frozenset[str],
        *,
        allow_inline: bool = True,
    ) -> list[dict[str, torch.Tensor]]:
        if allow_inline and self._small(spec, tensors, params):
            # Handing a tiny CPU kernel to the worker thread (two thread switches and
            # GIL hand-offs) costs more than the kernel: run it here, on the loop.
            return self.run_sync(spec, tensors, params, want)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.run_sync, spec, tensors, params, want)

    def _small(
        self, spec: OpSpec, tensors: Sequence[Mapping[str, torch.Tensor]], params: Mapping[str, Any]
    ) -> bool:
        """Whether a batch is cheap enough to run inline (its elements, all tensors and
        an init op's weight, under ``inline_below_elements``)."""
        limit = self.inline_below_elements
        if limit <= 0 or spec.work is not None:
            # An op with a Work cost (the lab) has no tensors that show its size.
            return False
        elements = math.prod(params["shape"]) if spec.family == "init" else 0
        for request in tensors:
            for t in request.values():
                elements += t.numel()
                if elements >= limit:
                    return False
        return elements < limit

    def run_sync(
        self,
        spec: OpSpec,
        tensors: Sequence[Mapping[str, torch.Tensor]],
        params: Mapping[str, Any],
        want: frozenset[str],
    ) -> list[dict[str, torch.Tensor]]:
        try:
            return self._run(spec, tensors, params, want)
        except GradservError:
            raise
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise DeviceOutOfMemory(
                f"op {spec.name!r}: the device ran out of memory for this batch; retry with smaller tensors"
            ) from None
        except Exception:
            log.exception("kernel %s failed", spec.name)
            raise InternalError(f"op {spec.name!r}: internal error while computing") from None

    def _run(
        self,
        spec: OpSpec,
        tensors: Sequence[Mapping[str, torch.Tensor]],
        params: Mapping[str, Any],
        want: frozenset[str],
    ) -> list[dict[str, torch.Tensor]]:
        if spec.family in ("init", "lab"):
            # Ops that draw their own tensors draw them on the device.
            params = {**params, DEVICE_PARAM: str(self.device)}
        batch = assemble(spec, tensors, params, want, unpadded_above=self.large_request_elements)
        if self.device.type == "cuda":
            batch.tensors = {
                k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.tensors.items()
            }
        outputs = disassemble(spec, spec.run(batch), tensors)
        if self.device.type == "cuda":
            outputs = [{k: v.to("cpu", non_blocking=True) for k, v in o.items()} for o in outputs]
            torch.cuda.current_stream(self.device).synchronize()
        for out in outputs:
            missing = want - out.keys()
            if missing:
                raise InternalError(f"op {spec.name!r}: kernel did not produce {sorted(missing)}")
        return outputs

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
