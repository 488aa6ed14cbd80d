"""The plot render worker: a child process that draws figures for lab/plots.py.

Flow position: lab/plots.py starts ``python -m gradserve.lab.render_worker`` and, one
at a time, writes a job to its stdin and reads the image from its stdout. Each message
is an 8-byte little-endian length and a pickle: a job is (figure function name, args),
an answer ("ok", bytes) or ("error", message). Only the server that started it writes
to it, so unpickling its messages is safe.

A process of its own rather than multiprocessing's spawn: spawn re-imports the parent's
main module in the child, which fails or re-runs code in any program that builds the
app at import time without a ``__main__`` guard. This module imports only figures.py
(numpy and matplotlib): the worker never loads torch.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

from gradserve.lab import figures

# The figure functions a job may name.
FIGURES: dict[str, Callable[..., bytes]] = {
    "activation_stats": figures.activation_stats_figure,
    "activation": figures.activation_figure,
    "margin": figures.margin_figure,
}
HEADER_BYTES = 8


def read_message(stream: BinaryIO) -> object | None:
    """One message, or None at the end of the stream."""
    header = stream.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES:
        return None
    body = stream.read(int.from_bytes(header, "little"))
    message: object = pickle.loads(body)
    return message


def frame(message: object) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(body).to_bytes(HEADER_BYTES, "little") + body


def main() -> None:
    jobs, answers = sys.stdin.buffer, sys.stdout.buffer
    while True:
        job = read_message(jobs)
        if job is None:
            return  # the server closed our stdin: it is stopping
        name: str
        args: tuple[Any, ...]
        name, args = job  # type: ignore[misc]
        try:
            answer: tuple[str, object] = ("ok", FIGURES[name](*args))
        except Exception as exc:  # reported to the server, which logs it
            answer = ("error", f"{type(exc).__name__}: {exc}")
        answers.write(frame(answer))
        answers.flush()


if __name__ == "__main__":
    main()
