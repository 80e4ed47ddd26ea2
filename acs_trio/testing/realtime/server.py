"""``serve_local_peer`` (for tests and the demo) and ``acs-trio peer`` (the CLI).

The local peer is a LOCAL TEST PEER: it speaks the Realtime GA wire protocol but has no model
behind it.  It greets with a recorded sentence and echoes each caller turn (docs/local-peer.md).
"""

from __future__ import annotations

import argparse
import logging
from functools import partial

import trio
from trio_websocket import WebSocketRequest, serve_websocket

from .connection import handle_connection
from .settings import LocalPeerSettings, PeerStats

__all__ = ["REALTIME_PATH", "main", "serve_local_peer"]

logger = logging.getLogger(__name__)

#: The Realtime endpoint path (contract "Wire facts"; docs/protocols/realtime.md §1.1 ``/v1/realtime``).
REALTIME_PATH = "/v1/realtime"

BANNER = (
    "LOCAL TEST PEER at %s: speaks the Realtime GA protocol but is NOT a real model "
    "(energy VAD, greets with a recording, echoes each caller turn)"
)


async def serve_local_peer(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    settings: LocalPeerSettings | None = None,
    record: list[PeerStats] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the local peer until cancelled; ``task_status.started(url)`` gives its ws:// URL.

    Any query string and any auth header are accepted; other paths get HTTP 404.  If ``record``
    is given, each connection's :class:`PeerStats` is appended to it when the connection opens.
    """
    settings = settings or LocalPeerSettings()

    async def handler(request: WebSocketRequest) -> None:
        path = request.path.split("?", 1)[0]
        if path != REALTIME_PATH:
            logger.info("local peer: rejected path %r (404)", path)
            await request.reject(404, body=b"not found: the local peer serves /v1/realtime\n")
            return
        ws = await request.accept()
        stats = PeerStats()
        if record is not None:
            record.append(stats)
        try:
            await handle_connection(ws, settings, stats=stats)
        except Exception:
            # A bug in one connection must not take the server (and every other client) down.
            logger.exception("local peer: connection failed")

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(
                serve_websocket,
                handler,
                host,
                port,
                None,
                max_message_size=settings.max_message_size,
            )
        )
        shown = f"[{host}]" if ":" in host else host
        url = f"ws://{shown}:{server.port}{REALTIME_PATH}"
        logger.warning(BANNER, url)
        task_status.started(url)


def _parser() -> argparse.ArgumentParser:
    defaults = LocalPeerSettings()
    p = argparse.ArgumentParser(
        prog="acs-trio peer",
        description="Run the LOCAL TEST PEER: a Realtime GA protocol endpoint with no model "
        "behind it (energy VAD; greets, then echoes each caller turn).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument(
        "--vad-threshold-dbfs", type=float, default=None,
        help="fixed VAD level in dBFS (default: map the session's 0..1 threshold, 0.5 -> -40)",
    )  # fmt: skip
    p.add_argument("--chunk-ms", type=int, default=defaults.chunk_ms, help="audio per delta")
    p.add_argument(
        "--pace-factor", type=float, default=defaults.pace_factor,
        help="send audio this many times faster than real time; 0 = one burst",
    )  # fmt: skip
    p.add_argument(
        "--first-delta-delay-s", type=float, default=defaults.first_delta_delay_s,
        help="pause between response.created and the first audio delta",
    )  # fmt: skip
    p.add_argument(
        "--end-call-after", type=int, default=None, metavar="N",
        help="call the end_call tool with the echo of the caller's Nth phrase (an agent hang-up)",
    )  # fmt: skip
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str]) -> int:
    """``acs-trio peer [--host --port --vad-threshold-dbfs --chunk-ms --pace-factor ...]``."""
    args = _parser().parse_args(argv)
    if args.chunk_ms <= 0 or args.pace_factor < 0 or args.first_delta_delay_s < 0:
        print("acs-trio peer: --chunk-ms must be > 0, pace and delay >= 0")
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    settings = LocalPeerSettings(
        vad_threshold_dbfs=args.vad_threshold_dbfs,
        chunk_ms=args.chunk_ms,
        pace_factor=args.pace_factor or None,
        first_delta_delay_s=args.first_delta_delay_s,
        end_call_after_turns=args.end_call_after,
    )
    try:
        trio.run(partial(serve_local_peer, host=args.host, port=args.port, settings=settings))
    except* KeyboardInterrupt:  # Ctrl-C arrives wrapped by the nursery
        logger.info("local peer: stopped")
    return 0
