"""Tell the app when hypercorn closes a WebSocket on its own (hypercorn 0.18).

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

from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection

__all__ = ["install"]

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
