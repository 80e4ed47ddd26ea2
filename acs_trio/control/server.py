"""``acs-trio serve`` / ``python -m acs_trio serve``: hypercorn with the Trio worker, drained on signals.

Why not just ``hypercorn --worker-class trio 'acs_trio.control.app:create_app()'`` (which also works): on
SIGTERM hypercorn stops accepting, gives open connections ``graceful_timeout`` and cancels them,
and only *then* runs the app's lifespan shutdown.  A call's media WebSocket is an open connection,
so under plain hypercorn calls are cut when that timeout expires (they are still hung up, by the
control plane's fallback).  Here the shutdown trigger drains first — ``/readyz`` turns 503, new
calls are refused, live calls get ``SHUTDOWN_GRACE_S`` and are then ended and hung up — and only
then lets hypercorn stop.  A second signal stops at once.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio import serve as hypercorn_serve

from ..config import (
    GRACEFUL_TIMEOUT_S,
    READ_TIMEOUT_S,
    TCP_KEEPALIVE_IDLE_S,
    TCP_KEEPALIVE_INTERVAL_S,
    TCP_KEEPALIVE_PROBES,
    TCP_USER_TIMEOUT_S,
    WEBSOCKET_MAX_MESSAGE_BYTES,
    Settings,
)
from ..errors import ConfigError
from .app import create_app
from .hypercorn_ws import decline_permessage_deflate
from .logs import configure_logging
from .quart_media import AcsTrioApp

__all__ = [
    "Launch",
    "ServerConfig",
    "check_listen_address",
    "hypercorn_config",
    "main",
    "parser",
    "prepare",
    "run_server",
    "serve",
    "tune_tcp_socket",
]

logger = logging.getLogger(__name__)

#: A ``--workers`` child checks this often that its parent is still there.
PARENT_POLL_S = 1.0


def tune_tcp_socket(sock: socket.socket) -> None:
    """TCP_USER_TIMEOUT and keepalive on a listening socket; Linux copies them to every accepted
    connection, so a peer that stops reading (or vanishes) is cut after ``TCP_USER_TIMEOUT_S``
    instead of the kernel's ~15 minutes of retransmissions.  That is what makes the call's close
    deadlines hold: hypercorn shields ``send_all`` with no deadline of its own.
    """
    if sock.family not in {socket.AF_INET, socket.AF_INET6}:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    options = [
        ("TCP_USER_TIMEOUT", int(TCP_USER_TIMEOUT_S * 1000)),
        ("TCP_KEEPIDLE", TCP_KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", TCP_KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", TCP_KEEPALIVE_PROBES),
    ]
    for name, value in options:
        option = getattr(socket, name, None)  # Linux has them all; others may not
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class ServerConfig(Config):
    """hypercorn's Config whose listening sockets get :func:`tune_tcp_socket`."""

    def create_sockets(self) -> Sockets:
        sockets = super().create_sockets()
        for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
            tune_tcp_socket(sock)
        return sockets


def hypercorn_config(host: str, port: int) -> Config:
    """hypercorn settings for this server (and :func:`.hypercorn_ws.decline_permessage_deflate`)."""
    decline_permessage_deflate()
    config = ServerConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.websocket_max_message_size = WEBSOCKET_MAX_MESSAGE_BYTES
    # No read deadline by default: a client trickling a request (or idling on a socket) would
    # hold a connection forever.  ACS media sends a frame every 20 ms, so this never cuts a call.
    config.read_timeout = int(READ_TIMEOUT_S)  # hypercorn types it as int
    config.graceful_timeout = GRACEFUL_TIMEOUT_S
    config.accesslog = None  # one line per 20 ms frame would be noise; calls log their own lines
    config.errorlog = logging.getLogger("hypercorn.error")
    config.include_server_header = False
    return config


async def serve(
    app: AcsTrioApp,
    config: Config,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    parent_pid: int | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM, draining calls before hypercorn shuts down.

    ``parent_pid``: a ``--workers`` child also drains when that parent is gone.
    """
    drained = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_on_signals, app, drained, nursery.cancel_scope)
        if parent_pid is not None:
            nursery.start_soon(_watch_parent, parent_pid)
        async with trio.open_nursery() as hypercorn_nursery:
            binds: list[str] = await hypercorn_nursery.start(
                partial(hypercorn_serve, app, config, shutdown_trigger=drained.wait)
            )
            logger.info("serving on %s", ", ".join(binds))
            task_status.started(binds)
        nursery.cancel_scope.cancel()  # hypercorn is done: stop listening for signals
    logger.info("server stopped")


async def _on_signals(app: AcsTrioApp, drained: trio.Event, scope: trio.CancelScope) -> None:
    """First signal: drain, then let hypercorn stop.  Second signal: stop at once."""
    draining = False
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async for signum in signals:
                name = signal.Signals(signum).name
                if draining:
                    logger.warning("%s again: stopping now", name)
                    scope.cancel()
                else:
                    logger.info("%s: draining calls before shutdown", name)
                    draining = True
                    nursery.start_soon(_drain, app, drained)


async def _watch_parent(parent_pid: int) -> None:
    """The ``--workers`` parent was killed (-9, OOM): drain as on SIGTERM, then exit.  The
    children run in their own sessions, so nothing else would stop them serving on forever."""
    while True:  # no event to wait on: polled
        await trio.sleep(PARENT_POLL_S)
        if os.getppid() != parent_pid:
            break
    logger.error("--workers parent %d is gone: draining as on SIGTERM", parent_pid)
    os.kill(os.getpid(), signal.SIGTERM)


async def _drain(app: AcsTrioApp, drained: trio.Event) -> None:
    try:
        await app.extensions["acs_trio"].stop()
    finally:
        drained.set()


def parser(prog: str = "acs-trio serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--host", help="bind address (default: HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, help="TCP port (default: PORT or 8000)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port (above 1 needs REDIS_URL; default 1)",
    )
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)  # a --workers child's socket
    parser.add_argument(
        "--local-peer",
        action="store_true",
        help="answer calls with the local ECHO TEST PEER instead of a model (development only)",
    )
    return parser


@dataclass(frozen=True)
class Launch:
    """What ``acs-trio serve`` runs: validated settings and the address to bind."""

    settings: Settings
    host: str
    port: int
    workers: int = 1
    #: A ``--workers`` child serves the parent's socket, inherited as this file descriptor.
    fd: int | None = None


def prepare(argv: list[str], *, need_model: bool = True) -> Launch | int:
    """Parse arguments and settings; an exit code (and one line on stderr) when they are wrong."""
    args = parser().parse_args(argv)
    if args.workers < 1:
        print("acs-trio serve: --workers must be 1 or more", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env()
        settings.require_acs()
        settings.require_incoming_call_secret()
        if need_model:
            settings.require_model()
        if args.workers > 1 and not settings.cluster.redis_url:
            raise ConfigError(
                "--workers above 1 needs REDIS_URL: a call's callbacks and media may reach any "
                "worker, so they must share call state (or run one worker per container)"
            )
    except ConfigError as exc:
        print(f"acs-trio serve: {exc}", file=sys.stderr)
        return 2
    host = args.host or settings.server.host
    port = settings.server.port if args.port is None else args.port
    if args.fd is None:  # (a --workers child serves the socket its parent bound)
        try:
            check_listen_address(host, port)
        except ConfigError as exc:
            print(f"acs-trio serve: {exc}", file=sys.stderr)
            return 2
    configure_logging(settings.log_level, settings.observability.log_format)
    for notice in settings.notices:
        logger.warning("%s", notice)
    return Launch(settings, host, port, args.workers, args.fd)


def check_listen_address(host: str, port: int) -> None:
    """Bind (and release) the address hypercorn will bind, so a mistake is one line, up front.

    Raises:
        ConfigError: HOST does not resolve, or the address is in use or not ours to bind.
    """
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"cannot listen on {where}: HOST={host!r} does not resolve ({exc.strerror}); "
            "use an address of this machine, e.g. 0.0.0.0 or 127.0.0.1"
        ) from None
    family, kind, proto, _, address = infos[0]
    probe = socket.socket(family, kind, proto)
    try:
        # What hypercorn sets too: a socket in TIME_WAIT is no reason to refuse.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
    except OSError as exc:
        hint = (
            "another process is listening there: stop it or set PORT (or --port) to a free port"
            if exc.errno == errno.EADDRINUSE
            else "set HOST to an address of this machine (0.0.0.0 for all)"
        )
        raise ConfigError(
            f"cannot listen on {where} (HOST/PORT): {exc.strerror or exc}; {hint}"
        ) from None
    finally:
        probe.close()


def main(argv: list[str]) -> int:
    if "--local-peer" in argv:
        # The echo peer lives in the demo wing; the CLI routes `serve --local-peer` there.
        print("acs-trio serve: --local-peer is handled by `acs-trio serve`", file=sys.stderr)
        return 2
    launch = prepare(argv)
    if isinstance(launch, int):
        return launch
    redis_url = launch.settings.cluster.redis_url
    if redis_url and launch.fd is None:
        from .redis_state import check_redis

        problem = trio.run(check_redis, redis_url)
        if problem is not None:
            print(
                f"acs-trio serve: {problem}; start Redis or unset REDIS_URL for one process",
                file=sys.stderr,
            )
            return 2
    if launch.workers > 1:
        from .workers import run_workers

        child_args = _without_workers(argv)
        trio.run(run_workers, launch.workers, launch.host, launch.port, child_args)
        return 0
    config = hypercorn_config(launch.host, launch.port)
    parent_pid = None
    if launch.fd is not None:
        config.bind = [f"fd://{launch.fd}"]
        parent_pid = os.getppid()
    app = create_app(launch.settings)
    return run_server(partial(serve, app, config, parent_pid=parent_pid), launch)


def run_server(main: Callable[[], Awaitable[object]], launch: Launch) -> int:
    """``trio.run(main)``; a failure to listen (lost a race since the check) is one line, rc 2."""
    code = 0
    try:
        trio.run(main)
    except* OSError as group:
        match, rest = group.split(_is_listen_error)
        if rest is not None:
            raise rest from None
        assert match is not None
        exc = _first_leaf(match)
        where = f"{launch.host}:{launch.port}"
        print(f"acs-trio serve: cannot listen on {where} (HOST/PORT): {exc}", file=sys.stderr)
        code = 2
    return code


def _is_listen_error(exc: BaseException) -> bool:
    return isinstance(exc, socket.gaierror) or (
        isinstance(exc, OSError)
        and exc.errno in {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES}
    )


def _first_leaf(group: BaseExceptionGroup[OSError]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _without_workers(argv: list[str]) -> list[str]:
    """The arguments for a child: everything but ``--workers N`` / ``--workers=N``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out
