"""schemathesis against the served OpenAPI: every /v1 and V2 REST route, no 5xx, no hang,
every answer conforms to its documented schema (issue 8, item 1).

The schema is the one a real `gradserve serve` process serves at /openapi.json; each
operation gets a bounded, derandomized hypothesis run (positive and negative data), so
a run is reproducible and its length is bounded. Failures of every operation are
collected, then reported together with the first failing case as a curl command.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gradserve.ops import build_registry
from tests.conftest import ServerProcess
from tests.fuzz._support import RssWatch, log_excerpt

# Per operation and generation mode: ~48 operations x 2 modes x 25 = ~2,000 requests at most.
MAX_EXAMPLES = 25
REQUEST_TIMEOUT_S = 10.0
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
V2_MODEL_ROUTES = ("", "/ready", "/config", "/infer")


def expected_routes() -> set[tuple[str, str]]:
    """(method, path) of every route API.md sections 2-3 name."""
    routes = {("GET", "/v1/ops")}
    for spec in build_registry():
        routes.add(("POST", f"/v1/{spec.family}/{spec.name}"))
    routes |= {("GET", "/v2"), ("GET", "/v2/health/live"), ("GET", "/v2/health/ready")}
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        for suffix in V2_MODEL_ROUTES:
            routes.add(("POST" if suffix == "/infer" else "GET", base + suffix))
    return routes


@pytest.fixture(scope="module")
def openapi(fuzz_server: tuple[ServerProcess, RssWatch]) -> dict[str, Any]:
    server, _ = fuzz_server
    return dict(httpx.get(f"{server.url}/openapi.json", timeout=30).json())


def test_openapi_declares_every_route(openapi: dict[str, Any]) -> None:
    """Every route is documented, with its path params and (for POSTs) a request body,
    so that schema-driven tools reach it."""
    declared = {(m.upper(), p) for p, item in openapi["paths"].items() for m in item}
    missing = sorted(expected_routes() - declared)
    problems = [f"route not in the OpenAPI: {m} {p}" for m, p in missing]
    for path, item in openapi["paths"].items():
        if not path.startswith(("/v1/", "/v2")):
            continue
        for method, op in item.items():
            names = {p["name"] for p in op.get("parameters", []) if p.get("in") == "path"}
            wanted = {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}
            if wanted - names:
                problems.append(f"{method.upper()} {path}: path params {sorted(wanted - names)} undeclared")
            if method == "post" and "requestBody" not in op:
                problems.append(f"POST {path}: no requestBody")
            ok = op.get("responses", {}).get("200", {})
            if "content" not in ok and path != "/metrics":
                problems.append(f"{method.upper()} {path}: no 200 response schema")
    print(f"\nopenapi: {len(declared)} operations declared, {len(problems)} problems")
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(240)
def test_schemathesis_every_operation(fuzz_server: tuple[ServerProcess, RssWatch]) -> None:
    server, watch = fuzz_server
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    session = requests.Session()
    failures: list[str] = []
    skipped: list[str] = []
    counts = {"cases": 0, "operations": 0}
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        if not operation.path.startswith(("/v1/", "/v2")):
            continue
        counts["operations"] += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            label = f"{operation.method.upper()} {operation.path} [{mode.value}]"
            try:
                strategy = operation.as_strategy(generation_mode=mode)
            except Exception as exc:  # a mode that cannot apply (nothing to negate)
                print(f"skip {label}: {type(exc).__name__}: {exc}")
                continue

            @settings(
                max_examples=MAX_EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
                report_multiple_bugs=False,
            )
            @given(case=strategy, _=st.just(None))
            def run(case: schemathesis.Case[Any], _: None) -> None:
                counts["cases"] += 1
                response = case.call(base_url=server.url, session=session, timeout=REQUEST_TIMEOUT_S)
                case.validate_response(response, checks=CHECKS)

            try:
                run()
            except Unsatisfiable:  # nothing to negate in this operation (no params, no body)
                skipped.append(label)
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis's FailureGroup
                failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:1500]}")
    elapsed = time.monotonic() - started
    alive = httpx.get(f"{server.url}/healthz", timeout=10).status_code
    print(
        f"\nschemathesis: {counts['cases']} HTTP cases over {counts['operations']} operations "
        f"in {elapsed:.1f} s; {len(failures)} failing and {len(skipped)} unsatisfiable operation/mode pairs; {watch.summary()}"
    )
    for failure in failures:
        print("FAIL", failure[:600])
    assert alive == 200
    assert not failures, "\n\n".join(failures) + "\n" + log_excerpt(server)
