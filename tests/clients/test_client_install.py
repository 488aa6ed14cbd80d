"""`pip install ./clients` in a fresh virtual environment, without torch, gives a
working client: it imports, and it calls a real gradserve process over HTTP and gRPC.

Installs from the package index (through pip's cache when warm), so it is marked e2e.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT, ServerProcess

pytestmark = pytest.mark.e2e

PROBE = textwrap.dedent(
    """
    import importlib.util, sys
    assert importlib.util.find_spec("torch") is None, "torch must not be installed"
    import gradserve_client
    from gradserve_client import Client, GrpcClient
    url, target = sys.argv[1], sys.argv[2]
    with Client(url) as http, GrpcClient(target) as grpc:
        a = http.loss("cross_entropy", [[3.2, 5.1, -1.7]], [0], grad=True)
        b = grpc.loss("cross_entropy", [[3.2, 5.1, -1.7]], [0], grad=True)
        assert (a["grad_input"] == b["grad_input"]).all()
        print(gradserve_client.__file__, float(a["loss"]))
    """
)


def test_fresh_install_without_torch(server: ServerProcess, tmp_path: Path) -> None:
    # The test run's own PYTHONPATH would lead the new interpreter back to the sources.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    # Build from a copy: setuptools writes build/ and *.egg-info/ next to the sources.
    source = tmp_path / "clients"
    shutil.copytree(
        ROOT / "clients", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "-c",
            str(ROOT / "constraints.txt"),
            str(ROOT / "clients"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert install.returncode == 0, install.stderr
    torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, timeout=60, env=env)
    assert torch.returncode != 0
    # Run from tmp_path so that the installed copy, not the source tree, is imported.
    done = subprocess.run(
        [str(python), "-c", PROBE, server.url, server.grpc_target],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert str(venv) in done.stdout and "2.0403" in done.stdout
