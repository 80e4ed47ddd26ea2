"""``acs-trio serve`` / ``python -m acs_trio serve``: hypercorn with the Trio worker, drained on signals.

Why not just ``hypercorn --worker-class trio 'acs_trio.app:create_app()'`` (which also works): on
SIGTERM hypercorn stops accepting, gives open connections ``graceful_timeout`` and cancels them,
and only *then* runs the app's lifespan shutdown.  A call's media WebSocket is an open connection,
so under plain hypercorn calls are cut when that timeout expires (they are still hung up, by the
control plane's fallback).  Here the shutdown trigger drains first — ``/readyz`` turns 503, new
calls are refused, live calls get ``SHUTDOWN_GRACE_S`` and are then ended and hung up — and only
then lets hypercorn stop.  A second signal stops at once.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from functools import partial

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from .app import AcsTrioApp, create_app
from .config import Settings
from .errors import ConfigError

__all__ = ["hypercorn_config", "main", "serve"]

logger = logging.getLogger(__name__)

#: Largest WebSocket message hypercorn assembles (an ACS 20 ms frame is ~1.4 KB of JSON).
WEBSOCKET_MAX_MESSAGE_BYTES = 1024 * 1024
#: After the drain, how long hypercorn waits for the last connections before cancelling them.
GRACEFUL_TIMEOUT_S = 5.0


def hypercorn_config(host: str, port: int) -> Config:
    """hypercorn settings for this server.

    permessage-deflate: hypercorn 0.18 accepts it whenever a client offers it (``Handshake.accept``
    always lists ``PerMessageDeflate()``; there is no setting), so it cannot be refused here.  The
    media route logs when ACS offers it; performance-notes.md explains why it matters.
    """
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.websocket_max_message_size = WEBSOCKET_MAX_MESSAGE_BYTES
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
) -> None:
    """Serve until SIGINT/SIGTERM, draining calls before hypercorn shuts down."""
    drained = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_on_signals, app, drained, nursery.cancel_scope)
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


async def _drain(app: AcsTrioApp, drained: trio.Event) -> None:
    try:
        await app.extensions["acs_trio"].stop()
    finally:
        drained.set()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="acs-trio serve", description=__doc__.split("\n")[0])
    parser.add_argument("--host", help="bind address (default: HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, help="TCP port (default: PORT or 8000)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        settings.require_acs()
    except ConfigError as exc:
        print(f"acs-trio serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    host = args.host or settings.server.host
    port = settings.server.port if args.port is None else args.port
    app = create_app(settings)
    trio.run(serve, app, hypercorn_config(host, port))
    return 0
