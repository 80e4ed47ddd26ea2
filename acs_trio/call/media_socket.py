"""The one interface the call bridge needs from the ACS media WebSocket.

``run_call`` knows nothing of Quart: the control plane adapts its websocket object to this protocol
(:class:`acs_trio.control.app.QuartMediaSocket`), and tests adapt a trio-websocket connection.  Keeping the
seam this narrow is what lets a whole call run under the mock clock.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["MediaSocket"]


class MediaSocket(Protocol):
    """A connected, already-authenticated ACS media WebSocket (we are the server side)."""

    async def receive(self) -> str | bytes:
        """Next message from ACS.

        Raises:
            MediaClosed: ACS closed the socket (the caller hung up) or it was closed here.
        """
        ...

    async def send(self, message: str) -> None:
        """Send one text message to ACS.

        Raises:
            MediaClosed: the socket is closed.
        """
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close the socket with ``code`` unless it is closed already; never raises MediaClosed."""
        ...
