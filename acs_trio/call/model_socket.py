"""The one interface the call bridge needs from the realtime model's WebSocket.

The mirror of :mod:`.media_socket`: ``run_call`` knows nothing of trio-websocket.  The production
adapter is :class:`acs_trio.control.model_ws.WebsocketModelSocket`, which translates
trio-websocket's ``ConnectionClosed`` into :class:`~acs_trio.errors.ModelClosed` at the boundary.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

__all__ = ["ModelConnector", "ModelSocket"]


class ModelSocket(Protocol):
    """An open realtime-model WebSocket (we are the client side)."""

    async def send(self, message: str) -> None:
        """Send one client event (JSON text).

        Raises:
            ModelClosed: the socket is closed.
        """
        ...

    async def receive(self) -> str | bytes:
        """The next server event.

        Raises:
            ModelClosed: the model closed the socket, or it was closed here.
        """
        ...

    async def ping(self) -> None:
        """Send a WebSocket ping and return when its pong arrives (the caller bounds the wait).

        Raises:
            ModelClosed: the socket is closed.
        """
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code`` (handshake bounded by the adapter); never raises ModelClosed."""
        ...


#: What ``run_call`` needs: something that opens one model socket for as long as it is entered.
#: Raises :class:`~acs_trio.errors.ModelConnectError` / :class:`~acs_trio.errors.ModelRejected`.
ModelConnector = Callable[[], AbstractAsyncContextManager[ModelSocket]]
