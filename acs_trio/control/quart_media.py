"""The ACS media WebSocket under Quart-Trio: the adapter behind :class:`MediaSocket`.

Quart and hypercorn names stop here: a disconnect becomes
:class:`~acs_trio.errors.MediaClosed` with ACS's close code, and the call bridge sees only
:class:`~acs_trio.call.media_socket.MediaSocket`.  This leans on two quart-trio internals
(``_create_websocket_from_scope`` and the connection's ``send_channel``), which is why
quart-trio is pinned below 0.14 in pyproject.toml.
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import Any, cast

import trio
from hypercorn.utils import UnexpectedMessageError
from quart import has_request_context, has_websocket_context, request, websocket
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIWebsocketConnection
from quart_trio.wrappers.websocket import TrioWebsocket

from ..config import MEDIA_DISCONNECT_GRACE_S
from ..errors import MediaClosed

__all__ = ["AcsTrioApp", "MediaWebsocket", "QuartMediaSocket"]


class MediaWebsocket(TrioWebsocket):
    """quart-trio's websocket plus the close code ACS sent (None while open)."""

    disconnect_code: int | None = None


class MediaASGIWebsocketConnection(TrioASGIWebsocketConnection):
    """quart-trio's ASGI websocket connection, with an orderly end instead of a cancel.

    Upstream ``handle_messages`` cancels the handler's nursery on ``websocket.disconnect``, so a
    caller hanging up would reach ``run_call`` as ``trio.Cancelled``.  Here the disconnect records
    the close code and closes the message channel (``receive()`` raises ``trio.EndOfChannel`` →
    :class:`QuartMediaSocket` raises ``MediaClosed(code=...)``), and only puts a grace deadline on
    the nursery.  It also skips quart's per-message ``websocket_received`` signal: nothing here
    listens to it, and it costs a blinker dispatch per 20 ms frame (docs/performance.md, "Earlier measurements").
    """

    async def __call__(self, receive: Any, send: Any) -> None:
        ws = cast(MediaWebsocket, self._create_websocket_from_scope(send))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, nursery, receive, ws)
            nursery.start_soon(self.handle_websocket, nursery, ws, send)

    async def _pump(self, nursery: trio.Nursery, receive: Any, ws: MediaWebsocket) -> None:
        with self.send_channel:
            while True:
                event = await receive()
                if event["type"] == "websocket.receive":
                    text = event.get("text")
                    await self.send_channel.send(
                        text if text is not None else event.get("bytes") or b""
                    )
                elif event["type"] == "websocket.disconnect":
                    ws.disconnect_code = int(event.get("code", 1005))
                    break
        grace = trio.current_time() + MEDIA_DISCONNECT_GRACE_S
        nursery.cancel_scope.deadline = min(nursery.cancel_scope.deadline, grace)


class AcsTrioApp(QuartTrio):
    asgi_websocket_class = MediaASGIWebsocketConnection
    websocket_class = MediaWebsocket

    def log_exception(
        self,
        exception_info: tuple[type, BaseException, TracebackType] | tuple[None, None, None],
    ) -> None:
        """Quart's "Exception on …" line, with the secrets in the path cut short.

        Upstream logs the whole path, and paths here carry secrets (per-call tokens, the
        softphone's token and media secret).
        """
        if has_request_context() or has_websocket_context():
            where = websocket if has_websocket_context() else request
            kind = "websocket" if has_websocket_context() else f"request {where.method}"
            self.logger.error(
                "Exception on %s %s", kind, redacted_path(where.path), exc_info=exception_info
            )
        else:
            super().log_exception(exception_info)


def redacted_path(path: str) -> str:
    """``path`` with each segment longer than 16 characters (a secret) cut to 4 and "…"."""
    return "/".join(f"{part[:4]}…" if len(part) > 16 else part for part in path.split("/"))


class QuartMediaSocket:
    """:class:`~acs_trio.call.media_socket.MediaSocket` over the route's (accepted) quart websocket."""

    def __init__(self, ws: MediaWebsocket) -> None:
        self._ws = ws
        self._closed = False

    async def receive(self) -> str | bytes:
        try:
            message: str | bytes = await self._ws.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            code = self._ws.disconnect_code
            raise MediaClosed(f"ACS closed the media socket (code {code})", code=code) from None
        return message

    async def send(self, message: str) -> None:
        if self._closed or self._ws.disconnect_code is not None:
            raise MediaClosed("media socket is closed", code=self._ws.disconnect_code)
        try:
            await self._ws.send(message)
        except (UnexpectedMessageError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise MediaClosed(f"media send failed: {exc!r}") from exc

    async def close(self, code: int, reason: str) -> None:
        if self._closed or self._ws.disconnect_code is not None:
            return
        self._closed = True
        # Already closing (a race with ACS's own close) is not an error for us.
        with contextlib.suppress(UnexpectedMessageError, RuntimeError, trio.BrokenResourceError):
            await self._ws.close(code, reason)
