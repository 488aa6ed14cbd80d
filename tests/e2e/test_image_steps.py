"""The image's own steps, replayed without a Docker engine (none runs here or in CI).

Read from the Dockerfile, not copied: the build stage's COPY lines and its `pip wheel`
line; the CPU runtime stage's `pip install` line, minus the index URL; the final stage's
ENV, ENTRYPOINT and HEALTHCHECK. The wheel is installed into a fresh virtual environment
whose third-party packages are this environment's (linked, gradserve left out), with
`--no-index`: pip checks them against constraints.txt and can fetch nothing, so the
CPU torch pinned there is used and no CUDA build is ever pulled. The entrypoint then
runs as `nobody` (when the test runs as root), and the HEALTHCHECK command must fail
while the server is not up and pass once it is ready.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.e2e

DOCKERFILE = (ROOT / "Dockerfile").read_text()
UNPRIVILEGED = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--")


def stage(name: str) -> list[str]:
    """The instructions of one stage, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    out: list[str] = []
    inside = False
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("FROM "):
            inside = line.split()[-1] == name
        elif inside and line and not line.startswith("#"):
            out.append(line)
    assert out, f"no stage {name} in the Dockerfile"
    return out


def run_line(name: str, prefix: str) -> list[str]:
    (line,) = [i for i in stage(name) if i.startswith(f"RUN {prefix}")]
    return shlex.split(line.removeprefix("RUN "))


def exec_form(name: str, instruction: str) -> list[str]:
    (line,) = [i for i in stage(name) if i.startswith(instruction + " ")]
    return list(json.loads(line[line.index("[") :]))


def final_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in stage("final"):
        if line.startswith("ENV "):
            for item in shlex.split(line.removeprefix("ENV ")):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def base_python() -> str:
    """An interpreter of this Python version that `nobody` may run (pyenv's under a 0700
    /root may not be), so the venv is usable by the unprivileged user."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        getattr(sys, "_base_executable", sys.executable),
        f"/usr/bin/{version}",
        f"/usr/local/bin/{version}",
    ]
    for candidate in candidates:
        if not os.access(candidate, os.X_OK):
            continue
        if (
            os.geteuid() != 0
            or subprocess.run([*UNPRIVILEGED, candidate, "-c", "import venv"]).returncode == 0
        ):
            return candidate
    pytest.skip(f"no {version} interpreter that an unprivileged user can run")


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not tmp_path: its parents are 0700, and `nobody` must read the venv and wheel.
    path = Path(tempfile.mkdtemp(prefix="gradserve-image-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def build_wheel(src: Path) -> Path:
    """The build stage: its COPY lines into a clean source dir, then its `pip wheel` line."""
    for line in stage("build"):
        if line.startswith("COPY "):
            *sources, dest = line.split()[1:]
            for source in sources:
                target = src / dest / (Path(source).name if dest.endswith("/") else "")
                if (ROOT / source).is_dir():
                    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
                    shutil.copytree(ROOT / source, src / dest, ignore=ignore)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / source, target)
    argv = run_line("build", "pip wheel")
    wheels = Path(argv[argv.index("--wheel-dir") + 1])
    argv[argv.index("--wheel-dir") + 1] = str(src / "wheels")
    subprocess.run([sys.executable, "-m", *argv], cwd=src, check=True, capture_output=True, timeout=300)
    assert wheels == Path("/wheels")
    (wheel,) = (src / "wheels").glob("gradserve-*.whl")
    return wheel


def make_venv(venv: Path) -> Path:
    subprocess.run([base_python(), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (site_dir,) = venv.glob("lib/python*/site-packages")
    # Third-party packages come from this environment, linked one by one: gradserve
    # itself (an editable install here) and .pth hooks stay out, so the wheel is what runs.
    deps = venv / "deps"
    deps.mkdir()
    for entry in Path(site.getsitepackages()[0]).iterdir():
        if "gradserve" in entry.name.lower() or entry.suffix == ".pth":
            continue
        (deps / entry.name).symlink_to(entry)
    (site_dir / "deps.pth").write_text(f"{deps}\n")
    return venv / "bin" / "python"


def healthcheck(argv: list[str], env: dict[str, str], as_user: tuple[str, ...]) -> int:
    return subprocess.run([*as_user, *argv], env=env, capture_output=True, timeout=30).returncode


@pytest.mark.timeout(240)
def test_wheel_installs_with_the_runtime_pip_line_and_serves_as_nobody(workdir: Path) -> None:
    wheel = build_wheel(workdir / "src")
    python = make_venv(workdir / "venv")

    # The runtime stage's pip line, minus the index URL: --no-index instead, so nothing
    # is fetched and torch must be the pinned one already on disk.
    argv = run_line("runtime-cpu", "pip install")
    i = argv.index("--extra-index-url")
    del argv[i : i + 2]
    argv = [str(wheel) if a.startswith("/wheels/") else a for a in argv]
    assert argv[:4] == ["pip", "install", "-c", "constraints.txt"], argv
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), *argv[1:], "--no-index"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    probe = "import gradserve, torch; print(gradserve.__file__, torch.__version__)"
    where, torch_version = subprocess.check_output([str(python), "-c", probe], text=True).split()
    assert where.startswith(str(workdir / "venv")), where  # the wheel, not the source tree
    pinned = re.search(r"^torch==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert pinned is not None and torch_version.split("+")[0] == pinned[1], torch_version

    # The image's ENV and ENTRYPOINT; ports moved to free ones, as `docker run -e` would.
    http_port, grpc_port = free_port(), free_port()
    env = {
        "PATH": f"{python.parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workdir),
        **final_env(),
        "GRADSERVE_HOST": "127.0.0.1",
        "GRADSERVE_HTTP_PORT": str(http_port),
        "GRADSERVE_GRPC_PORT": str(grpc_port),
    }
    assert env["GRADSERVE_HTTP_PORT"] and "PYTHONUNBUFFERED" in env
    entrypoint = exec_form("final", "ENTRYPOINT")
    assert entrypoint == ["gradserve", "serve"]
    check = exec_form("final", "HEALTHCHECK")
    as_user: tuple[str, ...] = UNPRIVILEGED if os.geteuid() == 0 else ()
    assert stage("final").count("USER 10001") == 1  # the image's user; here: nobody

    assert healthcheck(check, env, as_user) != 0  # nothing listening yet
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        # The log file is opened here and inherited: nobody cannot create files in workdir.
        proc = subprocess.Popen([*as_user, *entrypoint], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while healthcheck(check, env, as_user) != 0:
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, f"HEALTHCHECK never passed:\n{log_path.read_text()}"
            time.sleep(0.5)
        if as_user:
            owner = subprocess.check_output(["ps", "-o", "user=", "-p", str(proc.pid)], text=True).strip()
            assert owner == "nobody", owner
        proc.send_signal(signal.SIGTERM)  # docker stop: the drain, then exit 0
        assert proc.wait(60) == 0, log_path.read_text()
        assert healthcheck(check, env, as_user) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
