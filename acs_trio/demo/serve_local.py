"""``acs-trio serve --local-peer``: the real server, answering with the local ECHO TEST PEER.

For development against a real ACS number or the simulator without a model account.  It is an
explicit opt-in because an echo bot on a production phone line is worse than no server at all:
plain ``acs-trio serve`` refuses to start without a model setting.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import partial

import trio

from ..config import ModelEndpoint
from ..control.app import create_app
from ..control.server import Launch, hypercorn_config, prepare, run_server, serve
from ..testing.realtime import serve_local_peer

__all__ = ["main"]

logger = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    launch = prepare([arg for arg in argv if arg != "--local-peer"], need_model=False)
    if isinstance(launch, int):
        return launch
    return run_server(partial(_serve, launch), launch)


async def _serve(launch: Launch) -> None:
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_local_peer)
        logger.warning(
            "LOCAL TEST PEER: calls are answered by an ECHO TEST PEER at %s, not a model "
            "(--local-peer; never use this on a production number)",
            url,
        )
        model = ModelEndpoint(url=url, provider="local test peer")
        app = create_app(replace(launch.settings, model=model))
        await serve(app, hypercorn_config(launch.host, launch.port))
        nursery.cancel_scope.cancel()
