"""The ACS media WebSocket under Quart-Trio: the adapter behind :class:`MediaSocket`.

Quart and hypercorn names stop here: a disconnect becomes
:class:`~acs_trio.errors.MediaClosed` with ACS's close code, and the call bridge sees only
:class:`~acs_trio.call.media_socket.MediaSocket`.  This leans on quart-trio internals
(``_create_websocket_from_scope``, ``handle_websocket``) and on the ASGI websocket events
hypercorn speaks, which is why quart-trio is pinned below 0.14 in pyproject.toml.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
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
    """quart-trio's websocket plus the close code ACS sent (None while open).

    ``receive()`` reads the ASGI ``receive`` callable itself (see
    :class:`MediaASGIWebsocketConnection`); :class:`QuartMediaSocket` goes further and skips
    quart's wrapper on both directions once the socket is accepted.
    """

    disconnect_code: int | None = None
    #: hypercorn's ASGI callables for this connection, set by the connection before the route runs.
    asgi_receive: Callable[[], Awaitable[Any]]
    asgi_send: Callable[[Any], Awaitable[None]]
    #: Called once when ACS's disconnect is read: puts the grace deadline on the handler.
    on_disconnect: Callable[[], None]

    async def receive_message(self) -> str | bytes:
        """The next message straight from hypercorn (no pump task, no channel in between).

        Raises:
            trio.EndOfChannel: ACS closed the socket (``disconnect_code`` says how).
        """
        if self.disconnect_code is not None:
            raise trio.EndOfChannel
        while True:
            event = await self.asgi_receive()
            kind = event["type"]
            if kind == "websocket.receive":
                text: str | None = event.get("text")
                return text if text is not None else event.get("bytes") or b""
            if kind == "websocket.disconnect":
                self.disconnect_code = int(event.get("code", 1005))
                self.on_disconnect()
                raise trio.EndOfChannel
            # "websocket.connect" (the handshake) when nothing read it before: skip.

    async def receive(self) -> str | bytes:
        await self.accept()
        return await self.receive_message()


class MediaASGIWebsocketConnection(TrioASGIWebsocketConnection):
    """quart-trio's ASGI websocket connection with one hop less per frame and an orderly end.

    Upstream runs a second task per socket that pumps every ASGI ``websocket.receive`` into a
    memory channel (fires quart's ``websocket_received`` signal per message) for the route to read
    again: two task hand-offs per 20 ms frame that buy nothing here, where the route reads
    continuously (docs/performance.md, profile).  Here the route's receive reads hypercorn's
    ASGI ``receive`` directly (:meth:`MediaWebsocket.receive_message`); hypercorn's own bounded
    app queue (``max_app_queue_size``) is the only buffer, so back-pressure still reaches ACS over
    TCP when the call cannot keep up.

    Upstream also cancels the handler on ``websocket.disconnect``, so a caller hanging up would
    reach ``run_call`` as ``trio.Cancelled``.  Here the disconnect records the close code and ends
    ``receive()`` with ``trio.EndOfChannel`` (→ :class:`QuartMediaSocket` raises
    ``MediaClosed(code=...)``), and only puts a grace deadline on the handler's nursery.
    """

    async def __call__(self, receive: Any, send: Any) -> None:
        ws = cast(MediaWebsocket, self._create_websocket_from_scope(send))
        async with trio.open_nursery() as nursery:

            def on_disconnect() -> None:
                grace = trio.current_time() + MEDIA_DISCONNECT_GRACE_S
                nursery.cancel_scope.deadline = min(nursery.cancel_scope.deadline, grace)

            ws.asgi_receive, ws.asgi_send, ws.on_disconnect = receive, send, on_disconnect
            nursery.start_soon(self.handle_websocket, nursery, ws, send)


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
    """:class:`~acs_trio.call.media_socket.MediaSocket` over the route's (accepted) quart websocket.

    Audio goes straight to hypercorn's ASGI callables: quart's ``Websocket.send``/``receive``
    re-run ``accept()`` (a ``Headers`` object and two awaits) on every message.
    """

    def __init__(self, ws: MediaWebsocket) -> None:
        self._ws = ws
        self._receive = ws.receive_message
        self._send = ws.asgi_send
        self._closed = False

    async def receive(self) -> str | bytes:
        try:
            return await self._receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            code = self._ws.disconnect_code
            raise MediaClosed(f"ACS closed the media socket (code {code})", code=code) from None

    async def send(self, message: str) -> None:
        if self._closed or self._ws.disconnect_code is not None:
            raise MediaClosed("media socket is closed", code=self._ws.disconnect_code)
        try:
            await self._send({"type": "websocket.send", "text": message})
        except (UnexpectedMessageError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise MediaClosed(f"media send failed: {exc!r}") from exc

    async def close(self, code: int, reason: str) -> None:
        if self._closed or self._ws.disconnect_code is not None:
            return
        self._closed = True
        # Already closing (a race with ACS's own close) is not an error for us.
        with contextlib.suppress(UnexpectedMessageError, RuntimeError, trio.BrokenResourceError):
            await self._ws.close(code, reason)
