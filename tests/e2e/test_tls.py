"""TLS and mutual TLS on both ports of a real `gradserve serve`, with API keys on top (the
usual deployment), from the SDK's four clients, tritonclient (HTTP here; gRPC in a
subprocess, as its protos clash with gradserve's) and curl.

The certificate authority is made here with the `cryptography` package: a CA, a server
certificate for localhost and 127.0.0.1, a client certificate it signed, and a rogue CA
with a client certificate of its own (which a mutual-TLS server must refuse).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gradserve_client import (
    AsyncClient,
    AsyncGrpcClient,
    Client,
    GradserveError,
    GrpcClient,
    RetryPolicy,
    UnauthenticatedError,
)
from tests.conftest import ROOT, ServerProcess, free_port

pytestmark = [pytest.mark.e2e]

KEY = "tls-test-key-0123456789abcdefghijkl"
NO_RETRY = RetryPolicy(max_retries=0)
X = [-1.5, 0.0, 2.0]


# -- a certificate authority, made here -------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate from another CA
    rogue_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str, *, server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def _write(
    folder: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _ca("gradserve test CA")
    ca_path, _ = _write(folder, "ca", ca_key, ca_cert)
    server_cert, server_key = _write(folder, "server", *_leaf(ca_key, ca_cert, "localhost", server=True))
    client_cert, client_key = _write(folder, "client", *_leaf(ca_key, ca_cert, "a client", server=False))
    rogue_ca_key, rogue_ca_cert = _ca("someone else's CA")
    rogue_cert, rogue_key = _write(
        folder, "rogue", *_leaf(rogue_ca_key, rogue_ca_cert, "a stranger", server=False)
    )
    return Pki(ca_path, server_cert, server_key, client_cert, client_key, rogue_cert, rogue_key)


# -- servers -----------------------------------------------------------------------------


def _start(tmp_path: Path, pki: Pki, *, mutual: bool) -> ServerProcess:
    """`gradserve serve` with TLS (and mutual TLS) and a key, configured by environment."""
    http_port, grpc_port = free_port(), free_port()
    log_path = tmp_path / f"server-{http_port}.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "service"),
        "GRADSERVE_TLS_CERT": str(pki.server_cert),
        "GRADSERVE_TLS_KEY": str(pki.server_key),
        "GRADSERVE_API_KEYS": KEY,
    }
    if mutual:
        env["GRADSERVE_TLS_CLIENT_CA"] = str(pki.ca)
    cmd = [sys.executable, "-m", "gradserve", "serve", "--host", "127.0.0.1"]
    cmd += ["--http-port", str(http_port), "--grpc-port", str(grpc_port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    server = ServerProcess(proc, http_port, grpc_port, log_path)
    context = ssl.create_default_context(cafile=str(pki.ca))
    if mutual:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            if (
                httpx.get(f"https://127.0.0.1:{http_port}/readyz", verify=context, timeout=1).status_code
                == 200
            ):
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server not ready:\n{server.log()}")


@pytest.fixture(scope="module")
def tls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = _start(tmp_path_factory.mktemp("tls"), pki, mutual=False)
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def mtls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = _start(tmp_path_factory.mktemp("mtls"), pki, mutual=True)
    yield server
    assert server.stop() == 0


def https(server: ServerProcess) -> str:
    return f"https://127.0.0.1:{server.http_port}"


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", *args], capture_output=True, text=True, timeout=60
    )


# The tritonclient.grpc side, in its own process (see tests/e2e/tritonclient_grpc_checks.py).
TRITON_GRPC = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

target, ca, cert, key, api_key = sys.argv[1:6]
options = {"root_certificates": ca}
if cert != "-":
    options.update(private_key=key, certificate_chain=cert)
client = grpcclient.InferenceServerClient(target, ssl=True, **options)
out = {"live": None, "y": None, "error": None}
try:
    out["live"] = client.is_server_live()
    x = grpcclient.InferInput("x", [3], "FP32")
    x.set_data_from_numpy(np.array([-1.5, 0.0, 2.0], np.float32))
    headers = {"authorization": f"Bearer {api_key}"} if api_key != "-" else None
    out["y"] = client.infer("relu", [x], headers=headers).as_numpy("y").tolist()
except InferenceServerException as exc:
    out["error"] = f"{exc.status()} {exc.message()}"
print(json.dumps(out))
"""


def triton_grpc(server: ServerProcess, pki: Pki, *, cert: bool, key: str | None) -> dict[str, object]:
    args = [server.grpc_target, str(pki.ca)]
    args += [str(pki.client_cert), str(pki.client_key)] if cert else ["-", "-"]
    args.append(key or "-")
    done = subprocess.run(
        [sys.executable, "-c", TRITON_GRPC, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- TLS ---------------------------------------------------------------------------------


def test_the_sdk_over_tls_with_a_key(tls_server: ServerProcess, pki: Pki) -> None:
    with Client(https(tls_server), ca_cert=pki.ca, api_key=KEY) as client:
        assert client.activation("relu", X)["y"].tolist() == [0.0, 0.0, 2.0]
        assert client.ready()
    with GrpcClient(
        tls_server.grpc_target, ca_cert=pki.ca, api_key=KEY, catalog_url=https(tls_server)
    ) as grpc_client:
        assert grpc_client.loss("mse", [1.0, 2.0], [1.0, 0.0])["loss"].tolist() == pytest.approx(2.0)
        assert any(op.name == "relu" for op in grpc_client.ops())  # the catalog over HTTPS, same key
        with grpc_client.stream() as stream:  # its own channel: the same credentials and key
            assert stream.activation("relu", X)["y"].tolist() == [0.0, 0.0, 2.0]

    async def twins() -> None:
        async with AsyncClient(https(tls_server), ca_cert=str(pki.ca), api_key=KEY) as client:
            assert (await client.activation("relu", X))["y"].tolist() == [0.0, 0.0, 2.0]
        async with AsyncGrpcClient(tls_server.grpc_target, ca_cert=pki.ca, api_key=KEY) as client:
            assert (await client.activation("relu", X))["y"].tolist() == [0.0, 0.0, 2.0]
            async with client.stream() as stream:
                assert (await stream.activation("relu", X))["y"].tolist() == [0.0, 0.0, 2.0]

    asyncio.run(twins())

    # The key still matters over TLS.
    with (
        Client(https(tls_server), ca_cert=pki.ca, retry=NO_RETRY) as client,
        pytest.raises(UnauthenticatedError),
    ):
        client.activation("relu", X)
    with (
        GrpcClient(tls_server.grpc_target, ca_cert=pki.ca, retry=NO_RETRY) as grpc_client,
        pytest.raises(UnauthenticatedError),
    ):
        grpc_client.activation("relu", X)


def test_tls_only_and_the_servers_identity_is_checked(tls_server: ServerProcess) -> None:
    # Plain text to a TLS port gets nowhere, on either port.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{tls_server.http_port}/healthz", timeout=5)
    with grpc.insecure_channel(tls_server.grpc_target) as channel, pytest.raises(grpc.FutureTimeoutError):
        grpc.channel_ready_future(channel).result(timeout=3)
    # A client that trusts only the system's roots refuses the test CA's certificate,
    # and says so at once instead of retrying.
    with Client(https(tls_server), api_key=KEY) as client, pytest.raises(GradserveError) as info:
        client.activation("relu", X)
    assert "certificate" in str(info.value).lower() and info.value.attempts == 1


def test_curl_over_tls(tls_server: ServerProcess, pki: Pki) -> None:
    body = '{"x": [-1.5, 0.0, 2.0]}'
    url = f"{https(tls_server)}/v1/activations/relu"
    ok = curl("--cacert", str(pki.ca), "-H", f"Authorization: Bearer {KEY}", "-H", "X-Request-ID: curl-1",
              "-D", "-", "-d", body, url)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert '"data":[0.0,0.0,2.0]' in ok.stdout and "x-request-id: curl-1" in ok.stdout.lower()
    refused = curl("--cacert", str(pki.ca), "-o", "/dev/null", "-w", "%{http_code}", "-d", body, url)
    assert refused.stdout == "401"
    assert curl("--cacert", str(pki.ca), f"{https(tls_server)}/healthz").stdout == '{"status":"alive"}'
    untrusted = curl(url)  # the system's roots do not know the test CA
    assert untrusted.returncode == 60, untrusted  # curl: peer certificate cannot be authenticated


def test_tritonclient_over_tls(tls_server: ServerProcess, pki: Pki) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(
        f"127.0.0.1:{tls_server.http_port}", ssl=True, ssl_options={"ca_certs": str(pki.ca)}
    )
    try:
        assert client.is_server_live()  # a probe: open
        x = httpclient.InferInput("x", [3], "FP32")
        x.set_data_from_numpy(np.array(X, np.float32))
        result = client.infer("relu", [x], headers={"Authorization": f"Bearer {KEY}"})
        assert result.as_numpy("y").tolist() == [0.0, 0.0, 2.0]
    finally:
        client.close()
    out = triton_grpc(tls_server, pki, cert=False, key=KEY)
    assert out == {"live": True, "y": [0.0, 0.0, 2.0], "error": None}, out
    out = triton_grpc(tls_server, pki, cert=False, key=None)
    assert out["live"] is True and "UNAUTHENTICATED" in str(out["error"]), out


# -- mutual TLS --------------------------------------------------------------------------


def test_mutual_tls_from_the_sdk(mtls_server: ServerProcess, pki: Pki) -> None:
    mine = {"ca_cert": pki.ca, "client_cert": pki.client_cert, "client_key": pki.client_key, "api_key": KEY}
    with Client(https(mtls_server), **mine) as client:
        assert client.activation("relu", X)["y"].tolist() == [0.0, 0.0, 2.0]
    with GrpcClient(mtls_server.grpc_target, **mine) as grpc_client:
        assert grpc_client.activation("relu", X)["y"].tolist() == [0.0, 0.0, 2.0]

    async def twins() -> None:
        async with AsyncClient(https(mtls_server), **mine) as client:
            assert (await client.activation("relu", X))["y"].tolist() == [0.0, 0.0, 2.0]
        async with AsyncGrpcClient(mtls_server.grpc_target, **mine) as client:
            assert (await client.activation("relu", X))["y"].tolist() == [0.0, 0.0, 2.0]

    asyncio.run(twins())


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate"])
def test_mutual_tls_refuses_a_client_without_our_certificate(
    mtls_server: ServerProcess, pki: Pki, who: str
) -> None:
    cert = {} if who == "no certificate" else {"client_cert": pki.rogue_cert, "client_key": pki.rogue_key}
    with Client(https(mtls_server), ca_cert=pki.ca, api_key=KEY, retry=NO_RETRY, **cert) as client:
        with pytest.raises(GradserveError):
            client.activation("relu", X)
        assert not client.live()  # not even the open probes: the handshake is refused
    with GrpcClient(
        mtls_server.grpc_target, ca_cert=pki.ca, api_key=KEY, retry=NO_RETRY, timeout_s=5, **cert
    ) as grpc_client:
        with pytest.raises(GradserveError):
            grpc_client.activation("relu", X)
        assert not grpc_client.live()
    args = ["--cacert", str(pki.ca), f"{https(mtls_server)}/healthz"]
    if cert:
        args = ["--cert", str(pki.rogue_cert), "--key", str(pki.rogue_key), *args]
    refused = curl(*args)
    assert refused.returncode != 0 and '"alive"' not in refused.stdout, refused


def test_curl_and_tritonclient_with_a_client_certificate(mtls_server: ServerProcess, pki: Pki) -> None:
    ok = curl("--cacert", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key),
              "-H", f"Authorization: Bearer {KEY}", "-d", '{"x": [2.0]}',
              f"{https(mtls_server)}/v1/activations/relu")  # fmt: skip
    assert ok.returncode == 0 and '"data":[2.0]' in ok.stdout, ok

    import tritonclient.http as httpclient

    options = {"ca_certs": str(pki.ca), "certfile": str(pki.client_cert), "keyfile": str(pki.client_key)}
    client = httpclient.InferenceServerClient(
        f"127.0.0.1:{mtls_server.http_port}", ssl=True, ssl_options=options
    )
    try:
        x = httpclient.InferInput("x", [3], "FP32")
        x.set_data_from_numpy(np.array(X, np.float32))
        result = client.infer("relu", [x], headers={"Authorization": f"Bearer {KEY}"})
        assert result.as_numpy("y").tolist() == [0.0, 0.0, 2.0]
    finally:
        client.close()
    assert triton_grpc(mtls_server, pki, cert=True, key=KEY) == {
        "live": True,
        "y": [0.0, 0.0, 2.0],
        "error": None,
    }
    refused = triton_grpc(mtls_server, pki, cert=False, key=KEY)
    assert refused["live"] is None and refused["error"], refused


def test_settings_refuse_half_a_tls_configuration(tmp_path: Path, pki: Pki) -> None:
    for env in (
        {"GRADSERVE_TLS_CERT": str(pki.server_cert)},
        {"GRADSERVE_TLS_CLIENT_CA": str(pki.ca)},
    ):
        done = subprocess.run(
            [sys.executable, "-m", "gradserve", "serve", "--http-port", "0", "--grpc-port", "0"],
            capture_output=True,
            text=True,
            env={"PYTHONPATH": "service", "PATH": "/usr/bin:/bin", **env},
            cwd=ROOT,
            timeout=60,
        )
        assert done.returncode != 0 and "tls_" in done.stderr, done.stderr
