"""tritonclient.grpc checks against a running gradserve, run as a separate process.

Why a script: tritonclient.grpc registers Triton's ``inference.*`` protos in protobuf's
default pool, and so do gradserve's stubs; one process cannot import both ("duplicate
symbol"). tests/e2e/test_tritonclient_grpc.py runs each check group here in its own
process against the shared server fixture.

    python tests/e2e/tritonclient_grpc_checks.py HOST:PORT [GROUP ...]

Exit status 0 when every check in the named groups (default: all) passes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

Client = grpcclient.InferenceServerClient


def tensor(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


def wanted(*names: str) -> list[grpcclient.InferRequestedOutput]:
    return [grpcclient.InferRequestedOutput(n) for n in names]


def check_health(c: Client) -> None:
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("relu") and c.is_model_ready("cross_entropy", "1")


def check_metadata(c: Client) -> None:
    server = c.get_server_metadata(as_json=True)
    assert server["name"] == "gradserve" and "binary_tensor_data" in server["extensions"], server
    meta = c.get_model_metadata("maxout", as_json=True)
    assert [t["name"] for t in meta["inputs"]] == ["x", "weight", "bias", "grad_y"], meta
    assert [t["name"] for t in meta["outputs"]] == ["y", "grad_x", "grad_weight", "grad_bias"], meta
    config = c.get_model_config("nll", as_json=True)["config"]
    assert [i["name"] for i in config["input"]] == ["input", "target", "weight", "grad_loss"], config
    assert config["input"][2].get("optional") is True


def check_activations(c: Client) -> None:
    x = np.array([[-2.0, -0.5, 0.0, 1.5]], np.float32)
    result = c.infer("relu", [tensor("x", x, "FP32")], outputs=wanted("y", "grad_x"), request_id="g1")
    assert result.get_response().id == "g1"
    assert result.as_numpy("y").tolist() == [[0.0, 0.0, 0.0, 1.5]]
    assert result.as_numpy("grad_x").tolist() == [[0.0, 0.0, 0.0, 1.0]]  # ReLU'(0) = 0
    result = c.infer("elu", [tensor("x", x, "FP32")], outputs=wanted("grad_x"), parameters={"alpha": 2.0})
    # ELU'(0) is alpha, as torch fixes it.
    np.testing.assert_allclose(
        result.as_numpy("grad_x"), [[2 * np.exp(-2.0), 2 * np.exp(-0.5), 2.0, 1.0]], rtol=1e-6
    )
    for datatype in ("FP16", "BF16", "FP64"):
        xd = x.astype(triton_to_np_dtype(datatype))
        result = c.infer("relu", [tensor("x", xd, datatype)])
        assert result.get_output("y").datatype == datatype
        assert np.asarray(result.as_numpy("y"), np.float32).tolist() == [[0.0, 0.0, 0.0, 1.5]]
    # No outputs named: the plain outputs only.
    result = c.infer("relu", [tensor("x", x, "FP32")])
    assert result.as_numpy("grad_x") is None and result.as_numpy("y") is not None


def check_losses(c: Client) -> None:
    x = np.array([[0.5, -1.0], [2.0, 0.0]], np.float32)
    t = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    result = c.infer(
        "huber",
        [tensor("input", x, "FP32"), tensor("target", t, "FP32")],
        outputs=wanted("loss", "grad_input"),
        parameters={"delta": 1.0, "reduction": "sum"},
    )
    d = x - t
    ref = np.where(np.abs(d) <= 1, 0.5 * d * d, np.abs(d) - 0.5).sum()
    assert abs(result.as_numpy("loss").item() - ref) < 1e-6
    np.testing.assert_allclose(result.as_numpy("grad_input"), np.clip(d, -1, 1), rtol=1e-6)
    scores = np.array([[3.2, 5.1, -1.7]], np.float32)
    result = c.infer(
        "hinge",
        [tensor("input", scores, "FP32"), tensor("target", np.array([0], np.int64), "INT64")],
        outputs=wanted("loss", "grad_input"),
        parameters={"margin": 1.0},
    )
    assert abs(result.as_numpy("loss").item() - 2.9) < 1e-5  # the lecture's cat example
    assert result.as_numpy("grad_input").tolist() == [[-1.0, 1.0, 0.0]]


def check_init(c: Client) -> None:
    a = c.infer(
        "normal", [], parameters={"shape": "200,100", "seed": 9, "std": 0.01}, outputs=wanted("weight", "std")
    )
    b = c.infer(
        "normal",
        [tensor("shape", np.array([200, 100], np.int64), "INT64")],
        parameters={"seed": 9, "std": 0.01},
    )
    w = a.as_numpy("weight")
    assert w.shape == (200, 100) and abs(float(w.std()) - 0.01) < 0.001
    assert np.array_equal(w, b.as_numpy("weight"))
    assert abs(a.as_numpy("std").item() - 0.01) < 1e-9


def check_errors(c: Client) -> None:
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: c.infer("nope", [tensor("x", x, "FP32")]), "StatusCode.NOT_FOUND"),
        (
            lambda: c.infer(
                "cross_entropy", [tensor("input", x, "FP32"), tensor("target", np.array([5]), "INT64")]
            ),
            "StatusCode.INVALID_ARGUMENT",
        ),
        (
            lambda: c.infer("bce", [tensor("input", x, "FP32"), tensor("target", x, "FP32")]),
            "StatusCode.INVALID_ARGUMENT",
        ),
        (lambda: c.infer("normal", [], parameters={"shape": "-3,2"}), "StatusCode.INVALID_ARGUMENT"),
        (lambda: c.get_model_metadata("nope"), "StatusCode.NOT_FOUND"),
    ]
    for call, status in cases:
        try:
            call()
        except InferenceServerException as exc:
            assert exc.status() == status, (exc.status(), exc.message())
        else:
            raise AssertionError(f"expected {status}")
    assert c.is_server_live()


def check_large(c: Client) -> None:
    x = np.random.default_rng(0).standard_normal((1536, 1024)).astype(np.float32)  # 6 MiB each way
    result = c.infer("relu", [tensor("x", x, "FP32")])
    assert np.array_equal(result.as_numpy("y"), np.maximum(x, 0))


CHECKS: dict[str, Callable[[Client], None]] = {
    "health": check_health,
    "metadata": check_metadata,
    "activations": check_activations,
    "losses": check_losses,
    "init": check_init,
    "errors": check_errors,
    "large": check_large,
}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    target, groups = argv[0], argv[1:] or list(CHECKS)
    client = grpcclient.InferenceServerClient(target)
    failed = 0
    for name in groups:
        try:
            check = CHECKS[name]  # an unknown group name fails too
            check(client)
        except Exception as exc:  # report every group, then fail
            failed += 1
            print(f"FAIL {name}: {type(exc).__name__}: {exc}")
        else:
            print(f"ok   {name}")
    print(f"{len(groups) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
