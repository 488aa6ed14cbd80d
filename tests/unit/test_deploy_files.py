"""The deployment files, checked offline (no Docker engine, no cluster here or in CI).

docker-compose.yml against the compose specification's JSON schema (vendored under
deploy/schemas, from check-jsonschema's own vendored copy), the Kubernetes manifests
rendered with kustomize (where a kustomize is installed) and validated against the
Kubernetes schemas (kubernetes-validate, offline), the KServe resources against their
field names, and all of them cross-checked against Settings, the Dockerfile and the
nginx template. The image's steps themselves run in tests/e2e/test_image_steps.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gradserve.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.33.0"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


COMPOSE = load(ROOT / "docker-compose.yml")
NGINX_TEMPLATE = (DEPLOY / "nginx" / "nginx.conf.template").read_text()


def env_seconds(env: dict[str, str], name: str) -> float:
    return float(env.get(name, Settings.model_fields[name.removeprefix("GRADSERVE_").lower()].default))


# -- docker-compose.yml ---------------------------------------------------------------


def check_jsonschema(schema: Path, instance: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "check_jsonschema", "--schemafile", str(schema), str(instance)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_compose_validates_against_the_vendored_compose_spec_schema(tmp_path: Path) -> None:
    schema = DEPLOY / "schemas" / "compose-spec.json"
    done = check_jsonschema(schema, ROOT / "docker-compose.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    # The schema does reject: a misspelt service key fails.
    broken = tmp_path / "compose.yml"
    broken.write_text((ROOT / "docker-compose.yml").read_text().replace("stop_grace_period:", "stop_grace:"))
    assert check_jsonschema(schema, broken).returncode != 0


@pytest.mark.parametrize("name", ["gradserve", "gradserve-gpu"])
def test_compose_replicas_match_settings_and_outlast_the_drain(name: str) -> None:
    service = COMPOSE["services"][name]
    env = service["environment"]
    for key in env:
        assert key.startswith("GRADSERVE_")
        assert key.removeprefix("GRADSERVE_").lower() in Settings.model_fields
    assert {"8000", "8001"} <= set(service["expose"])
    assert "ports" not in service  # replicas are reached through nginx only
    # Docker must wait longer than the drain delay and timeout before its SIGKILL.
    drain_s = env_seconds(env, "GRADSERVE_DRAIN_DELAY_S") + env_seconds(env, "GRADSERVE_DRAIN_TIMEOUT_S")
    assert float(service["stop_grace_period"].rstrip("s")) > drain_s
    assert env_seconds(env, "GRADSERVE_DRAIN_DELAY_S") > 0


def test_compose_runs_several_replicas_behind_nginx_with_the_shared_template() -> None:
    assert COMPOSE["services"]["gradserve"]["deploy"]["replicas"] >= 2
    nginx = COMPOSE["services"]["nginx"]
    assert {"8000:8000", "8001:8001"} <= set(nginx["ports"])
    mounts = {v.split(":")[0]: v.split(":")[1] for v in nginx["volumes"]}
    assert mounts["./deploy/nginx/nginx.conf.template"] == "/etc/nginx/templates/nginx.conf.template"
    env = nginx["environment"]
    # The image's envsubst renders templates/nginx.conf.template into /etc/nginx/nginx.conf.
    assert env["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"
    placeholders = set(re.findall(r"\$\{(\w+)\}", NGINX_TEMPLATE))
    assert placeholders == {k for k in env if k.startswith("GRADSERVE_")}
    assert all(re.fullmatch(env["NGINX_ENVSUBST_FILTER"].lstrip("^") + r"\w+", p) for p in placeholders)
    assert env["GRADSERVE_HTTP_UPSTREAMS"].startswith("server gradserve:8000 ")
    assert env["GRADSERVE_GRPC_UPSTREAMS"].startswith("server gradserve:8001 ")
    assert nginx["depends_on"]["gradserve"]["condition"] == "service_healthy"


def test_nginx_template_retries_on_the_next_replica() -> None:
    text = NGINX_TEMPLATE
    assert re.search(r"listen \$\{GRADSERVE_LB_GRPC_PORT\} http2;", text)
    assert "grpc_pass grpc://gradserve_grpc;" in text
    assert "proxy_pass http://gradserve_http;" in text
    for directive in ("proxy_next_upstream", "grpc_next_upstream"):
        (line,) = re.findall(rf"^\s*{directive} (.*);$", text, re.M)
        assert {"error", "timeout", "http_503", "non_idempotent"} <= set(line.split())
        assert re.search(rf"^\s*{directive}_tries \d+;$", text, re.M)
    assert text.count("keepalive 64;") == 2
    assert 'proxy_set_header Connection "";' in text


def test_prometheus_scrapes_every_replica() -> None:
    prometheus = COMPOSE["services"]["prometheus"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    config = load(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    # One A record per replica (GPU replicas share the name by alias).
    assert sd["names"] == ["gradserve"] and sd["type"] == "A" and sd["port"] == 8000
    assert "gradserve" in COMPOSE["services"]["gradserve-gpu"]["networks"]["default"]["aliases"]


def test_compose_gpu_profile_reserves_a_device() -> None:
    gpu = COMPOSE["services"]["gradserve-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["VARIANT"] == "cuda"
    assert gpu["environment"]["GRADSERVE_DEVICE"] == "cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert COMPOSE["services"]["gradserve"]["build"]["args"]["VARIANT"] == "cpu"


# -- Dockerfile -----------------------------------------------------------------------


def test_dockerfile_is_multi_stage_non_root_with_a_health_check_and_a_cuda_variant() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", text, re.M)
    assert [name for _, name in stages] == ["build", "runtime-cpu", "runtime-cuda", "final"]
    assert dict((n, image) for image, n in stages)["final"] == "runtime-${VARIANT}"
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+-runtime-\S+$", text, re.M)
    assert re.search(r"^ARG TORCH_CUDA_INDEX_URL=https://download.pytorch.org/whl/cu\d+$", text, re.M)
    assert re.search(r"^RUN pip wheel --no-deps ", text, re.M)
    # Both runtimes install the wheel pinned by constraints.txt.
    assert (
        len(re.findall(r"^RUN pip install -c constraints.txt .*/wheels/gradserve-\*\.whl$", text, re.M)) == 2
    )
    assert re.search(r"^USER 10001$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*CMD \[.*/readyz", text, re.M)
    assert 'ENTRYPOINT ["gradserve", "serve"]' in text
    assert "EXPOSE 8000 8001" in text


def test_dockerignore_keeps_the_context_small_but_not_the_build_inputs() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip()[:1] not in "#"
    }
    assert {".venv", ".git", "tests"} <= ignored
    copied = re.findall(r"^COPY (?!--from)(.*) \S+$", (ROOT / "Dockerfile").read_text(), re.M)
    for path in " ".join(copied).split():
        assert (ROOT / path).exists(), path
        assert path not in ignored and path.split("/")[0] not in ignored, path


# -- Kubernetes (kustomize) and KServe ------------------------------------------------


def kustomize(overlay: Path) -> str | None:
    if shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(overlay)]
    elif shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(overlay)]
    else:
        return None
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout


def validate_k8s(docs: list[dict[str, Any]]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {doc["kind"]: doc for doc in docs}
    assert len(out) == len(docs)
    return out


def test_k8s_base_files_validate_without_kustomize() -> None:
    files = [p for p in sorted((DEPLOY / "k8s").rglob("*.yaml")) if p.name != "kustomization.yaml"]
    docs = [doc for p in files for doc in load_all(p.read_text())]
    # Patches are partial objects; only whole ones validate on their own.
    validate_k8s([d for d in docs if "selector" in d.get("spec", {}) or d["kind"] != "Deployment"])


@pytest.fixture(params=["cpu", "gpu"])
def rendered(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, dict[str, Any]]]]:
    text = kustomize(DEPLOY / "k8s" / "overlays" / request.param)
    if text is None:
        pytest.skip("neither kustomize nor kubectl is installed: overlays not rendered")
    docs = load_all(text)
    validate_k8s(docs)
    yield request.param, by_kind(docs)


def test_k8s_overlay_renders_a_valid_drain_aware_deployment(
    rendered: tuple[str, dict[str, dict[str, Any]]],
) -> None:
    variant, kinds = rendered
    assert set(kinds) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    deployment = kinds["Deployment"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    for name in env:
        assert name.removeprefix("GRADSERVE_").lower() in Settings.model_fields
    assert env["GRADSERVE_DEVICE"] == ("cuda" if variant == "gpu" else "cpu")
    assert container["image"] == f"gradserve:{'cuda' if variant == 'gpu' else 'cpu'}"

    # Probes: HTTP /readyz at start-up, gRPC health on 8001 for readiness, /healthz alive.
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["grpc"]["port"] == 8001
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The kubelet's SIGKILL comes after preStop + drain delay + drain timeout.
    pre_stop_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain_s = env_seconds(env, "GRADSERVE_DRAIN_DELAY_S") + env_seconds(env, "GRADSERVE_DRAIN_TIMEOUT_S")
    assert pod["spec"]["terminationGracePeriodSeconds"] > pre_stop_s + drain_s
    assert container["resources"]["requests"] and container["resources"]["limits"]
    if variant == "gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8000"

    ports = {p["name"]: p for p in kinds["Service"]["spec"]["ports"]}
    assert ports["grpc"]["port"] == 8001 and ports["grpc"]["appProtocol"] == "grpc"
    assert ports["http"]["port"] == 8000
    selector = kinds["Service"]["spec"]["selector"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_the_two_overlays_select_only_their_own_pods() -> None:
    # Both in one namespace (the GPU overlay's name suffix allows it): a CPU selector
    # that matched GPU pods put each under two PodDisruptionBudgets, and kubectl drain
    # refuses to evict a pod covered by more than one.
    texts = {v: kustomize(DEPLOY / "k8s" / "overlays" / v) for v in ("cpu", "gpu")}
    if any(t is None for t in texts.values()):
        pytest.skip("neither kustomize nor kubectl is installed: overlays not rendered")
    kinds = {v: by_kind(load_all(t)) for v, t in texts.items() if t is not None}
    for mine, other in (("cpu", "gpu"), ("gpu", "cpu")):
        labels = kinds[other]["Deployment"]["spec"]["template"]["metadata"]["labels"]
        for kind, path in (
            ("Service", ("spec", "selector")),
            ("PodDisruptionBudget", ("spec", "selector", "matchLabels")),
        ):
            selector = kinds[mine][kind]
            for key in path:
                selector = selector[key]
            assert not selector.items() <= labels.items(), (mine, kind, "selects", other)


# Field names of the KServe CRDs used (serving.kserve.io v0.15 API reference); no
# schema of KServe ships offline, so these are checked by name.
SERVING_RUNTIME_SPEC = {
    "annotations", "affinity", "builtInAdapter", "containers", "disabled", "grpcDataEndpoint",
    "grpcEndpoint", "httpDataEndpoint", "imagePullSecrets", "labels", "multiModel", "nodeSelector",
    "protocolVersions", "replicas", "storageHelper", "supportedModelFormats", "tolerations", "volumes",
    "hostIPC", "workerSpec",
}  # fmt: skip
MODEL_FORMAT = {"name", "version", "autoSelect", "priority"}
PREDICTOR = {
    "model", "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency",
    "timeout", "canaryTrafficPercent", "logger", "batcher", "labels", "annotations", "serviceAccountName",
    "nodeSelector", "tolerations", "affinity", "volumes", "terminationGracePeriodSeconds", "containers",
    "imagePullSecrets", "deploymentStrategy", "workerSpec",
}  # fmt: skip
MODEL_SPEC = {
    "modelFormat", "runtime", "protocolVersion", "storageUri", "storage", "env", "resources", "args",
    "image", "ports", "readinessProbe", "livenessProbe",
}  # fmt: skip


def test_kserve_runtime_and_inference_service_use_known_fields() -> None:
    runtime = load(DEPLOY / "kserve" / "servingruntime.yaml")
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    spec = runtime["spec"]
    assert set(spec) <= SERVING_RUNTIME_SPEC, set(spec) - SERVING_RUNTIME_SPEC
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    (fmt,) = spec["supportedModelFormats"]
    assert set(fmt) <= MODEL_FORMAT
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    assert {p["containerPort"] for p in container["ports"]} == {8000, 8001}
    assert {p["name"] for p in container["ports"]} == {"http1", "h2c"}  # KServe's port names
    # The container part is a core/v1 Container: validate it as one, inside a Pod.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [container]}}
    validate_k8s([pod])

    service = load(DEPLOY / "kserve" / "inferenceservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert set(service["spec"]) == {"predictor"}
    predictor = service["spec"]["predictor"]
    assert set(predictor) <= PREDICTOR, set(predictor) - PREDICTOR
    assert set(predictor["model"]) <= MODEL_SPEC, set(predictor["model"]) - MODEL_SPEC
    assert predictor["model"]["runtime"] == runtime["metadata"]["name"]
    assert predictor["model"]["modelFormat"]["name"] == fmt["name"]
    env = {e["name"]: e["value"] for e in container["env"]}
    drain_s = env_seconds(env, "GRADSERVE_DRAIN_DELAY_S") + env_seconds(env, "GRADSERVE_DRAIN_TIMEOUT_S")
    assert predictor["terminationGracePeriodSeconds"] > drain_s
