"""What a new user meets in the first hour (issue 11), through the real app in-process:
the landing page, HEAD on every probe, one op's catalog entry, errors that say where an
op lives and what a target should be, the served docs and their examples, switches for
boolean flags, and no GPU metric families on a CPU server."""

from __future__ import annotations

import httpx
import pytest
import torch

from gradserve.cli import build_parser, settings_from_args
from gradserve.config import Settings
from gradserve.ops import build_registry
from gradserve.rest.pages import DOCS_CSP

REGISTRY = build_registry()
JSON = {"Accept": "application/json"}
LECTURE = [[3.2, 5.1, -1.7]]


# -- the landing page -------------------------------------------------------------------


async def test_landing_page_is_html_for_browsers_and_json_on_request(app_client: httpx.AsyncClient) -> None:
    page = await app_client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["vary"] == "Accept"
    for path in ("/docs", "/redoc", "/lab", "/v1/ops", "/metrics", "/healthz", "/readyz", "/v2/health/ready"):
        assert f'href="{path}"' in page.text, path

    info = (await app_client.get("/", headers=JSON)).json()
    assert info["name"] == "gradserve" and info["ready"] is True
    assert info["links"]["docs"] == "/docs" and info["links"]["lab"] == "/lab"
    assert sum(info["ops"].values()) == len(REGISTRY)
    from gradserve import __version__

    assert info["version"] == __version__ and __version__ in page.text
    # A bare curl (*/*) and no Accept at all get the page; JSON must be preferred to win.
    for accept in ("*/*", "", "application/json;q=0.5, text/html"):
        answer = await app_client.get("/", headers={"Accept": accept})
        assert answer.headers["content-type"].startswith("text/html"), accept
    answer = await app_client.get("/", headers={"Accept": "text/html;q=0.1, application/*"})
    assert answer.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v2/health/live",
        "/v2/health/ready",
        "/v1/ops",
        "/docs",
        "/redoc",
    ],
)
async def test_head_answers_wherever_get_does(app_client: httpx.AsyncClient, path: str) -> None:
    get, head = await app_client.get(path), await app_client.head(path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["content-length"] == get.headers["content-length"]


async def test_head_of_an_unknown_path_is_404(app_client: httpx.AsyncClient) -> None:
    assert (await app_client.head("/nope")).status_code == 404


# -- the catalog and its errors ---------------------------------------------------------


async def test_one_ops_entry_is_its_catalog_row(app_client: httpx.AsyncClient) -> None:
    catalog = (await app_client.get("/v1/ops")).json()["ops"]
    for row in catalog:
        answer = await app_client.get(f"/v1/ops/{row['name']}")
        assert answer.status_code == 200 and answer.json() == row
    missing = await app_client.get("/v1/ops/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "op_not_found"


@pytest.mark.parametrize(
    ("op", "wrong", "right"),
    [
        ("mse", "activations", "losses"),
        ("relu", "losses", "activations"),
        ("xavier_normal", "losses", "init"),
    ],
)
async def test_an_op_under_the_wrong_family_says_where_it_lives(
    app_client: httpx.AsyncClient, op: str, wrong: str, right: str
) -> None:
    answer = await app_client.post(f"/v1/{wrong}/{op}", json={})
    assert answer.status_code == 404
    message = answer.json()["error"]["message"]
    assert f"POST /v1/{right}/{op}" in message and message.startswith(f'"{op}" is ')
    if op == "mse":
        assert message.startswith('"mse" is a loss: POST /v1/losses/mse')


async def test_an_unknown_op_is_still_unknown(app_client: httpx.AsyncClient) -> None:
    answer = await app_client.post("/v1/losses/nope", json={})
    assert answer.status_code == 404 and "unknown op 'nope'" in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "hint"),
    [
        ("/v1/losses/crossentropy", "did you mean 'cross_entropy'?"),  # a near miss of an op
        ("/v1/activations/Relu", "did you mean 'relu'?"),
        ("/v1/activation/relu", "did you mean /v1/activations/relu?"),  # of a family
        ("/v1/inits/normal", "did you mean /v1/init/normal?"),
        ("/v1/foo/relu", "op routes are /v1/activations/{op}, /v1/losses/{op}, /v1/init/{op}, /v1/lab/{op}"),
    ],
)
async def test_a_near_miss_of_an_op_or_family_says_what_was_meant(
    app_client: httpx.AsyncClient, path: str, hint: str
) -> None:
    answer = await app_client.post(path, json={})
    assert answer.status_code == 404
    assert hint in answer.json()["error"]["message"]


async def test_no_hint_for_a_name_that_is_not_close(app_client: httpx.AsyncClient) -> None:
    message = (await app_client.post("/v1/losses/nope", json={})).json()["error"]["message"]
    assert "did you mean" not in message
    long_name = "cross_entropy" * 10  # past the compared length: no comparison, no hint
    message = (await app_client.post(f"/v1/losses/{long_name}", json={})).json()["error"]["message"]
    assert "did you mean" not in message and "..." in message


@pytest.mark.parametrize(
    "target",
    [[0.0], [0.5], {"dtype": "float32", "shape": [1], "data": [0]}],
    ids=["whole-floats", "fraction", "float32-object"],
)
async def test_a_float_target_for_cross_entropy_says_indices_or_probabilities(
    app_client: httpx.AsyncClient, target: object
) -> None:
    answer = await app_client.post("/v1/losses/cross_entropy", json={"input": LECTURE, "target": target})
    assert answer.status_code == 422
    message = answer.json()["error"]["message"]
    assert "class indices are expected" in message
    assert "class probabilities" in message and "[1, 3]" in message  # how to send those


@pytest.mark.parametrize("op", ["nll", "hinge"])
@pytest.mark.parametrize(
    "target", [[0.5], {"dtype": "float32", "shape": [1], "data": [0]}], ids=["fraction", "float32-object"]
)
async def test_a_float_target_where_only_indices_go_says_so(
    app_client: httpx.AsyncClient, op: str, target: object
) -> None:
    answer = await app_client.post(f"/v1/losses/{op}", json={"input": LECTURE, "target": target})
    assert answer.status_code == 422
    assert "class indices are expected" in answer.json()["error"]["message"]


async def test_v2_float_target_says_class_indices(app_client: httpx.AsyncClient) -> None:
    body = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [3.2, 5.1, -1.7]},
            {"name": "target", "datatype": "FP32", "shape": [1], "data": [0]},
        ]
    }
    answer = await app_client.post("/v2/models/hinge/infer", json=body)
    assert answer.status_code in (400, 422)
    assert "class indices are expected" in answer.json()["error"]


async def test_a_valid_cross_entropy_still_works(app_client: httpx.AsyncClient) -> None:
    for target in ([0], [[0.7, 0.2, 0.1]]):
        answer = await app_client.post("/v1/losses/cross_entropy", json={"input": LECTURE, "target": target})
        assert answer.status_code == 200, answer.text


# -- the docs ----------------------------------------------------------------------------


async def test_docs_pages_and_assets_are_served_locally(app_client: httpx.AsyncClient) -> None:
    for page, assets in (
        ("/docs", ["/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css", "/docs/favicon.png"]),
        ("/redoc", ["/redoc/redoc.standalone.js", "/redoc/favicon.png"]),
    ):
        answer = await app_client.get(page)
        assert answer.status_code == 200 and answer.headers["content-security-policy"] == DOCS_CSP
        assert "http://" not in answer.text and "https://" not in answer.text, page  # no CDN, no fonts
        for asset in assets:
            assert f'"{asset}"' in answer.text, asset
            loaded = await app_client.get(asset)
            assert loaded.status_code == 200 and len(loaded.content) > 500, asset
    assert (await app_client.get("/redoc/logo-mini.svg")).status_code == 200  # ReDoc's own logo
    assert (await app_client.get("/docs/secrets.txt")).status_code == 404


async def test_every_documented_example_is_a_valid_request(app_client: httpx.AsyncClient) -> None:
    """/docs sends each op's example as it is: every one must answer 200."""
    schema = (await app_client.get("/openapi.json")).json()
    for spec in REGISTRY:
        route = f"/v1/{spec.family}/{spec.name}"
        example = schema["paths"][route]["post"]["requestBody"]["content"]["application/json"]["example"]
        answer = await app_client.post(route, json=example)
        assert answer.status_code == 200, (spec.name, answer.text)
        if spec.grad_outputs:
            assert set(spec.grad_output_names) & set(answer.json()), spec.name
    again = (await app_client.get("/openapi.json")).json()
    assert again == schema  # seeded: the same document every time


# -- flags and metrics -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "batching", "grpc"),
    [
        ([], True, True),
        (["--no-batching"], False, True),
        (["--batching"], True, True),
        (["--batching", "false"], False, True),  # the older spelling keeps working
        (["--no-grpc"], True, False),
        (["--no-grpc-enabled"], True, False),
        (["--grpc-enabled", "--no-batching"], False, True),
    ],
)
def test_boolean_flags_are_switches(argv: list[str], batching: bool, grpc: bool) -> None:
    settings = settings_from_args(build_parser().parse_args(["serve", *argv]))
    assert (settings.batching, settings.grpc_enabled) == (batching, grpc)


def test_environment_variables_are_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADSERVE_BATCHING", "false")
    monkeypatch.setenv("GRADSERVE_GRPC_ENABLED", "0")
    settings = settings_from_args(build_parser().parse_args(["serve"]))
    assert settings.batching is False and settings.grpc_enabled is False
    # A flag still beats the environment.
    assert settings_from_args(build_parser().parse_args(["serve", "--batching"])).batching is True


@pytest.mark.parametrize(
    ("env", "argv", "said"),
    [
        (
            {"GRADSERVE_MAX_BODY_BYTES": "abc"},
            [],
            "GRADSERVE_MAX_BODY_BYTES='abc': Input should be a valid integer",
        ),
        ({"GRADSERVE_BATCHING": "maybe"}, [], "GRADSERVE_BATCHING='maybe'"),
        ({}, ["--max-body-bytes", "-5"], "--max-body-bytes=-5: Input should be greater than 0"),
    ],
)
def test_a_bad_setting_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    argv: list[str],
    said: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_:
        settings_from_args(build_parser().parse_args(["serve", *argv]))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_every_boolean_setting_has_its_off_switch() -> None:
    parser = build_parser()
    for name, field in Settings.model_fields.items():
        if field.annotation is bool:
            flag = name.replace("_", "-")
            args = parser.parse_args(["serve", f"--no-{flag}"])
            assert getattr(args, name) is False, name


def test_a_bad_switch_value_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--batching", "flase"])
    assert "expected true or false" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the default device here is a GPU")
async def test_cpu_server_shows_no_gpu_metric_families(app_client: httpx.AsyncClient) -> None:
    text = (await app_client.get("/metrics")).text
    assert "nv_inference_request_success" in text
    assert "nv_gpu_" not in text
