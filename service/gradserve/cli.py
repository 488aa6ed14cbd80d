"""`gradserve serve`: settings -> runtime -> HTTP app + gRPC server on one event loop.

On SIGINT/SIGTERM (and SIGHUP) readiness turns 503 / NOT_SERVING at once; requests are still served
for the drain delay (load balancers need that long to stop routing here), then new work
is refused, queued and running work completes (up to the drain timeout), and both
servers stop. A second signal cuts the delay short.
The flags are derived from the Settings fields, so each setting has a flag and an
environment variable and neither list can drift; a boolean setting is a switch
(``--batching`` / ``--no-batching``; ``--no-grpc`` is short for ``--no-grpc-enabled``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import ssl
import sys
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, get_args

import pydantic
import uvicorn

from gradserve import __version__, logs, malloc
from gradserve.auth import KeyStore
from gradserve.config import Settings

if TYPE_CHECKING:
    from gradserve.runtime import Runtime

log = logging.getLogger("gradserve")


# Extra spellings of a boolean setting's off switch (``--no-grpc`` for grpc_enabled).
_OFF_ALIASES: dict[str, tuple[str, ...]] = {"grpc_enabled": ("--no-grpc",)}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _bool_value(text: str) -> bool:
    word = text.lower()
    if word in _TRUE + _FALSE:
        return word in _TRUE
    raise argparse.ArgumentTypeError(f"expected true or false, got {text[:40]!r}")


def _add_switch(parser: argparse.ArgumentParser, name: str, description: str, env_help: str) -> None:
    """A boolean setting as a switch: ``--batching`` turns it on, ``--no-batching`` off.

    The on form still takes an optional value (``--batching false``), the form these
    flags had before they were switches, so existing scripts keep working.
    """
    flag = f"--{name.replace('_', '-')}"
    offs = [f"--no-{flag[2:]}", *_OFF_ALIASES.get(name, ())]
    parser.add_argument(
        flag,
        dest=name,
        type=_bool_value,
        nargs="?",
        const=True,
        default=None,
        metavar="true|false",
        help=f"{description} Off: {' or '.join(offs)}. {env_help}",
    )
    parser.add_argument(*offs, dest=name, action="store_const", const=False, help=argparse.SUPPRESS)


def _flag_type(annotation: Any) -> tuple[Any, Sequence[str] | None]:
    choices = get_args(annotation)
    if choices and all(isinstance(c, str) for c in choices):
        return str, choices
    return annotation, None


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        env_help = f"[env GRADSERVE_{name.upper()}; default {field.default!r}]"
        if field.annotation is bool:
            _add_switch(parser, name, str(field.description), env_help)
            continue
        kind, choices = _flag_type(field.annotation)
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=kind,
            choices=choices,
            default=None,
            metavar=None if choices else name.upper(),
            help=f"{field.description} {env_help}",
        )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The settings from flags over GRADSERVE_* variables over defaults. A value that
    does not validate exits 2 with one line per setting, as a bad flag does in argparse
    (a variable's bad value used to end in pydantic's traceback)."""
    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    try:
        return Settings(**given)
    except pydantic.ValidationError as exc:
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "settings"
            source = f"--{name.replace('_', '-')}" if name in given else f"GRADSERVE_{name.upper()}"
            shown = repr(error.get("input"))[:60]
            print(f"gradserve serve: {source}={shown}: {error['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradserve", description="gradserve: losses, activations and inits")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="Run the HTTP and gRPC servers.")
    add_settings_flags(serve)
    sub.add_parser("bench", help="Run the benchmark and print a table (`gradserve bench --help`).")
    return parser


class _Server(uvicorn.Server):
    """uvicorn, with our drain taking over its signal handling."""

    def __init__(self, config: uvicorn.Config, on_signal: Any) -> None:
        super().__init__(config)
        self._on_signal = on_signal

    def handle_exit(self, sig: int, frame: types.FrameType | None) -> None:
        self._on_signal(sig)


def _http_tls(settings: Settings) -> dict[str, Any]:
    """uvicorn's TLS arguments (none without ``tls_cert``); with ``tls_client_ca`` a client
    must present a certificate signed by it (the handshake fails otherwise)."""
    if not settings.tls_cert:
        return {}
    return {
        "ssl_certfile": settings.tls_cert,
        "ssl_keyfile": settings.tls_key,
        "ssl_ca_certs": settings.tls_client_ca or None,
        "ssl_cert_reqs": ssl.CERT_REQUIRED if settings.tls_client_ca else ssl.CERT_NONE,
    }


def _log_guards(settings: Settings, runtime: Runtime) -> None:
    """One start-up line saying what guards this server (never the keys themselves)."""
    keys = "off" if runtime.keys is None else f"{len(runtime.keys)} configured"
    probes = "keyed" if settings.api_keys_on_probes and runtime.keys is not None else "open"
    tls = "off" if not settings.tls_cert else ("mutual" if settings.tls_client_ca else "on")
    log.info("API keys: %s (probes %s); TLS: %s; tracing: %s", keys, probes, tls, settings.otel_exporter)


async def serve(settings: Settings) -> None:
    from gradserve.grpc.server import GrpcServer
    from gradserve.rest.app import create_app
    from gradserve.rest.connections import guarded_protocol
    from gradserve.runtime import Runtime

    malloc.tune(settings.malloc_mmap_threshold_bytes)  # before the runtime allocates
    runtime = Runtime(settings)
    app = create_app(runtime)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.http_port,
        log_level=settings.log_level,
        loop="none",  # we run uvicorn on our own loop, shared with gRPC
        # httptools, with a connection cap and header/body/write deadlines (rest/connections.py)
        http=guarded_protocol(settings),
        lifespan="on",
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        timeout_keep_alive=settings.http_keep_alive_s,  # longer than client pools: see config.py
        access_log=False,  # ours (rest/gate.py) has the request id, op and timings
        log_config=None,  # uvicorn's lines go through our handler and format (logs.py)
        **_http_tls(settings),
    )
    _log_guards(settings, runtime)
    stopping = asyncio.Event()
    server = _Server(config, lambda sig: stopping.set())
    grpc_server = GrpcServer(runtime) if settings.grpc_enabled and settings.grpc_port else None
    loop = asyncio.get_running_loop()
    # SIGHUP (the terminal closed, or an operator's habit of "HUP reloads") drains like
    # SIGTERM: nothing is reloaded (keys and settings are read at start), but nothing
    # accepted is dropped either, as the default action (exit at once) did.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stopping.set)

    await runtime.start()
    if grpc_server is not None:
        await grpc_server.start()
    # Gives glibc's freed arenas back to the kernel when a load ends (malloc.py). Its first
    # step, before HTTP serves, reads the idle memory level that growth is measured from.
    trimmer = asyncio.create_task(malloc.trim_when_idle(settings.malloc_trim_idle_s), name="malloc-trim")
    http_task = asyncio.create_task(server.serve(), name="http")
    stop_task = asyncio.create_task(stopping.wait(), name="signal")
    done, _ = await asyncio.wait({http_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    trimmer.cancel()
    if http_task in done:  # uvicorn failed to start (port taken...)
        stop_task.cancel()
        await runtime.drain()
        if grpc_server is not None:
            await grpc_server.stop(0)
        runtime.close()
        http_task.result()
        raise SystemExit(1)
    # Readiness first (HTTP probes and gRPC health), while work is still taken: a load
    # balancer or Kubernetes endpoint update takes seconds to stop sending us requests.
    runtime.engine.draining = True
    if grpc_server is not None:
        grpc_server.set_not_serving()
    if settings.drain_delay_s > 0:
        log.info("signal received: not ready; still serving for %.1f s", settings.drain_delay_s)
        stopping.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), settings.drain_delay_s)
    log.info("draining (up to %.1f s)", settings.drain_timeout_s)
    await runtime.drain()
    server.should_exit = True
    if grpc_server is not None:
        await grpc_server.stop(1.0)
    await http_task
    runtime.close()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # The bench has its own parser; hand it every argument, flags included.
        from gradserve.bench import main as bench_main

        bench_main(argv[1:])
        return
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    problem = settings.tls_problem()
    if problem is not None:
        sys.exit(f"gradserve serve: {problem}")
    try:
        # Read here as well as in the runtime, so that a bad key or key file is one line
        # (the key itself is never shown), not a traceback from inside the event loop.
        KeyStore.from_settings(settings)
    except (ValueError, OSError) as exc:
        sys.exit(f"gradserve serve: api keys: {exc}")
    logs.configure(settings)  # text or JSON lines on stderr
    try:
        import uvloop

        run: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        run = asyncio.run
    try:
        run(serve(settings))
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
