"""``acs-trio phone``: talk to the agent from a browser, no ACS number needed.

Starts a server with only the softphone page (docs/softphone.md) and prints its URL.  The agent
is the configured realtime model when one is set (AZURE_OPENAI_*, OPENAI_API_KEY, REALTIME_URL:
then it is a real conversation), else — or with ``--local-peer`` — the local ECHO TEST PEER.  It
binds 127.0.0.1 by default: browsers give a page the microphone only on localhost or https.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace

import trio

from ..config import ModelEndpoint, Settings, SoftphoneSettings
from ..control.model_ws import model_connector
from ..control.server import hypercorn_config, serve
from ..control.softphone import create_phone_app, softphone_path
from ..errors import ConfigError
from ..testing.realtime import serve_local_peer

__all__ = ["main", "parser"]

logger = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="acs-trio phone", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 = any)")
    parser.add_argument(
        "--local-peer",
        action="store_true",
        help="answer with the local ECHO TEST PEER even when a model is configured",
    )
    return parser


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"acs-trio phone: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    softphone = settings.softphone or SoftphoneSettings.generated()
    use_local_peer = args.local_peer or settings.model is None
    trio.run(_run, replace(settings, softphone=softphone), args.host, args.port, use_local_peer)
    return 0


async def _run(settings: Settings, host: str, port: int, use_local_peer: bool) -> None:
    assert settings.softphone is not None
    async with trio.open_nursery() as nursery:
        if use_local_peer:
            url = await nursery.start(serve_local_peer)
            model = ModelEndpoint(url=url, provider="local test peer")
            logger.warning(
                "LOCAL TEST PEER: the agent is an ECHO TEST PEER at %s, not a model", url
            )
        else:
            model = settings.require_model()
            logger.info("agent: %r", model)
        app = create_phone_app(
            settings, settings.softphone, model_connector(model, settings.limits)
        )
        async with trio.open_nursery() as server_nursery:
            binds: list[str] = await server_nursery.start(serve, app, hypercorn_config(host, port))
            base = binds[0].replace("://0.0.0.0:", "://127.0.0.1:")
            print(f"softphone: open {base}{softphone_path(settings.softphone)}", flush=True)
        nursery.cancel_scope.cancel()  # the server has stopped (SIGINT/SIGTERM): stop the peer
