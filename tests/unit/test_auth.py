"""The key store (auth.py): where keys come from, what a valid Authorization is, and
which routes and RPCs are protected."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradserve.auth import KeyStore, parse_key_file, protected_grpc, protected_http
from gradserve.config import Settings

KEY_A = "ka-0123456789abcdef0123456789abcdef"
KEY_B = "kb-fedcba9876543210fedcba9876543210"


def test_no_keys_means_no_store() -> None:
    assert KeyStore.from_settings(Settings()) is None
    assert KeyStore.from_settings(Settings(api_keys=" , ,")) is None


def test_keys_from_the_setting_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2026-01\n\n  {KEY_B}  \n# {KEY_A} is a comment here\n")
    store = KeyStore.from_settings(Settings(api_keys=f" {KEY_A} ,", api_keys_file=str(path)))
    assert store is not None and len(store) == 2
    assert store.check(KEY_A.encode()) and store.check(KEY_B.encode())
    only_file = KeyStore.from_settings(Settings(api_keys_file=str(path)))
    assert only_file is not None and len(only_file) == 1 and not only_file.check(KEY_A.encode())


def test_an_empty_key_file_is_an_error_not_an_open_server(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# nothing yet\n")
    with pytest.raises(ValueError, match="holds no key"):
        KeyStore.from_settings(Settings(api_keys_file=str(path)))


def test_a_missing_key_file_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        KeyStore.from_settings(Settings(api_keys_file=str(tmp_path / "absent")))


@pytest.mark.parametrize(
    "bad", ["has space-in-it-0123456789", "tab\there-0123456789", "ключ-0123456789abcdef"]
)
def test_keys_must_fit_a_header_and_errors_never_show_them(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        KeyStore([bad])
    assert bad not in str(info.value)


def test_settings_repr_hides_the_keys() -> None:
    assert KEY_A not in repr(Settings(api_keys=KEY_A))


def test_parse_key_file() -> None:
    assert parse_key_file("a\n # b\n\n c \r\nd") == ["a", "c", "d"]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (f"Bearer {KEY_A}", True),
        (f"bearer {KEY_B}", True),  # the scheme is case-insensitive
        (f"BEARER   {KEY_A}  ", True),
        (f"Bearer {KEY_A}x", False),
        (f"Bearer {KEY_A[:-1]}", False),
        (f"Basic {KEY_A}", False),
        (KEY_A, False),  # no scheme
        ("Bearer ", False),
        ("Bearer", False),
        ("", False),
        (None, False),
        ("Bearer ключ", False),  # not ASCII (gRPC metadata arrives as str)
    ],
)
def test_check_bearer(value: str | None, ok: bool) -> None:
    store = KeyStore([KEY_A, KEY_B])
    assert store.check_bearer(value) is ok
    if value is not None and value.isascii():
        assert store.check_bearer(value.encode()) is ok


def test_each_process_salts_its_digests() -> None:
    # The digests are never comparable across stores (a leaked digest is useless).
    assert KeyStore([KEY_A])._digests != KeyStore([KEY_A])._digests


@pytest.mark.parametrize(
    ("path", "open_by_default"),
    [
        ("/v1/activations/relu", False),
        ("/v1/ops", False),
        ("/v1/lab/plots/margin", False),
        ("/v1", False),
        ("/v2", False),
        ("/v2/models/relu/infer", False),
        ("/v2/models/relu/versions/1/infer", False),
        ("/v2/models/relu/config", False),
        ("/v2/systemsharedmemory/status", False),
        ("/v2/health/live", True),
        ("/v2/health/ready", True),
        ("/healthz", True),
        ("/readyz", True),
        ("/metrics", True),
        ("/docs", True),
        ("/openapi.json", True),
        ("/lab", True),
        ("/lab/lab.js", True),
        ("/", True),
        ("/v10/x", True),  # not /v1: a 404 anyway
    ],
)
def test_protected_http_paths(path: str, open_by_default: bool) -> None:
    assert protected_http(path, probes=False) is not open_by_default
    probe = path in ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready")
    assert protected_http(path, probes=True) is (not open_by_default or probe)


@pytest.mark.parametrize(
    ("method", "open_by_default", "probe"),
    [
        ("/inference.GRPCInferenceService/ModelInfer", False, False),
        ("/inference.GRPCInferenceService/ModelStreamInfer", False, False),
        ("/inference.GRPCInferenceService/ModelMetadata", False, False),
        ("/inference.GRPCInferenceService/ServerLive", True, True),
        ("/inference.GRPCInferenceService/ServerReady", True, True),
        ("/grpc.health.v1.Health/Check", True, True),
        ("/grpc.health.v1.Health/Watch", True, True),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True, False),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", True, False),
    ],
)
def test_protected_grpc_methods(method: str, open_by_default: bool, probe: bool) -> None:
    assert protected_grpc(method, probes=False) is not open_by_default
    assert protected_grpc(method, probes=True) is (not open_by_default or probe)
