"""The container files cannot be run here (no Docker engine): parse and cross-check them."""

from __future__ import annotations

from pathlib import Path

import yaml

from gradserve.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_compose_service_matches_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["gradserve"]
    assert service["build"] == "."
    assert {"8000:8000", "8001:8001"} <= set(service["ports"])
    for name in service["environment"]:
        assert name.startswith("GRADSERVE_")
        assert name.removeprefix("GRADSERVE_").lower() in Settings.model_fields
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    # Docker must wait longer than the drain before it kills the process.
    drain = float(service["environment"]["GRADSERVE_DRAIN_TIMEOUT_S"])
    assert float(service["stop_grace_period"].rstrip("s")) > drain


def test_dockerfile_installs_pinned_and_runs_serve() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "-c constraints.txt" in text
    assert 'ENTRYPOINT ["gradserve", "serve"]' in text
    assert "EXPOSE 8000 8001" in text
    for copied in ("constraints.txt", "pyproject.toml", "service"):
        assert (ROOT / copied).exists()
