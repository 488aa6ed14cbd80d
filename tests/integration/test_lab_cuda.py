"""activation_stats on a GPU: the lecture's findings hold there too, seeded runs repeat
their bytes, and the answers come back to the host. Skipped where torch sees no GPU."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from gradserve.config import Settings
from gradserve.executor import Executor
from gradserve.ops import build_registry
from gradserve.validation import Limits, validate_params
from tests.integration.test_lab_api import PRESETS, assert_lecture_findings

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SPEC = build_registry().get("activation_stats")


@pytest.fixture(scope="module")
def cuda() -> Iterator[Executor]:
    executor = Executor(Settings(device="cuda"))
    yield executor
    executor.shutdown()


def _run(executor: Executor, **given: object) -> dict[str, torch.Tensor]:
    params = validate_params(SPEC, given, lenient=False, ignore_unknown=False, limits=Limits(1 << 24, 16))
    assert SPEC.check is not None
    SPEC.check({}, params)
    [out] = executor.run_sync(SPEC, [{}], params, frozenset(SPEC.output_names))
    return out


def test_findings_on_the_gpu(cuda: Executor) -> None:
    runs = {}
    for name, params in PRESETS.items():
        out = _run(cuda, **params)
        assert all(t.device.type == "cpu" for t in out.values())
        runs[name] = {k: v.double().numpy() if k != "hist" else v.numpy() for k, v in out.items()}
    assert_lecture_findings(runs)


def test_seeded_bytes_repeat_on_the_gpu(cuda: Executor) -> None:
    a = _run(cuda, depth=4, width=256, batch=512, activation="gelu", init="orthogonal", seed=3)
    b = _run(cuda, depth=4, width=256, batch=512, activation="gelu", init="orthogonal", seed=3)
    for name in a:
        assert np.array_equal(a[name].numpy(), b[name].numpy()), name
