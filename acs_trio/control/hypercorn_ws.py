"""The two places we patch hypercorn 0.18's WebSocket stream (pinned in pyproject.toml).

:func:`install`: tell the app when hypercorn closes a WebSocket on its own.
:func:`decline_permessage_deflate`: never negotiate per-message compression.

hypercorn closes a WebSocket itself when a message exceeds ``websocket_max_message_size`` (close
code 1009), and then says nothing to the ASGI app: no ``websocket.disconnect`` until the peer
completes the close handshake and the TCP connection ends.  A peer that does not answer the close
(or keeps streaming) therefore kept the call — and its model socket — alive until the media
timeout.  :func:`install` wraps ``WSStream._send_wsproto_event`` once per process: when hypercorn
(not the app, not a close reply) sends a close frame, the app gets ``websocket.disconnect`` with
that code at once and hypercorn stops feeding the app; TCP_USER_TIMEOUT, keepalive and
``read_timeout`` (server.py) bound how long the dead connection itself lingers.
"""

from __future__ import annotations

from typing import Any

from hypercorn.protocol import ws_stream
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection

__all__ = ["decline_permessage_deflate", "install"]

_MARK = "_acs_trio_reports_server_close"


def install() -> None:
    """Idempotent; call before serving (``create_app`` does)."""
    original = WSStream._send_wsproto_event
    if getattr(original, _MARK, False):
        return

    async def send_wsproto_event(self: WSStream, event: Any) -> None:
        server_close = (
            isinstance(event, CloseConnection)
            and self.state == ASGIWebsocketState.CONNECTED  # the app's close sets CLOSED first
            and self.connection.state == ConnectionState.OPEN  # not a reply to the peer's close
        )
        await original(self, event)
        if server_close and self.app_put is not None:
            self.state = ASGIWebsocketState.CLOSED
            self.closed = True  # nothing more reaches the app; app sends become no-ops
            await self.app_put({"type": "websocket.disconnect", "code": int(event.code)})

    setattr(send_wsproto_event, _MARK, True)
    WSStream._send_wsproto_event = send_wsproto_event  # type: ignore[method-assign]


def decline_permessage_deflate() -> None:
    """Answer WebSocket handshakes without per-message compression, whatever the client offers.

    hypercorn 0.18 accepts ``permessage-deflate`` whenever a client offers it (its
    ``Handshake.accept`` always lists ``PerMessageDeflate()``; there is no setting).  Compressing
    base64 PCM costs CPU on every 20 ms frame and gains little (docs/performance.md), so this wraps
    that method to negotiate as if nothing had been offered: the 101 carries no
    ``Sec-WebSocket-Extensions`` (RFC 6455 §9.1: the client then sends uncompressed frames).
    Idempotent; hypercorn is pinned in pyproject.toml.
    """
    handshake: Any = ws_stream.Handshake
    original = handshake.accept
    if getattr(original, "declines_deflate", False):
        return

    def accept(self: Any, subprotocol: Any, additional_headers: Any) -> Any:
        self.extensions = None
        return original(self, subprotocol, additional_headers)

    accept.declines_deflate = True  # type: ignore[attr-defined]
    handshake.accept = accept
