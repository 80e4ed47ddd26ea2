"""Early dial: open the model socket when the call is admitted, not when its media connects.

Answering a call and ACS opening the media WebSocket take a few hundred ms; dialling the model
(DNS, TCP, TLS, HTTP upgrade) takes about as long, and used to start only after both.  The control
plane starts :meth:`PreDial.run` next to ``answer_call``; the media route hands
:meth:`PreDial.connector` to ``run_call``, whose first session adopts the socket already open (or
raises the early dial's error, which the bridge's retry policy then handles).  Later sessions of
the call (reconnects, recycles) dial afresh.

The socket belongs to the task that opened it (its context manager must be exited there), so
:meth:`run` holds it until the bridge releases it, and the control plane cancels :meth:`run` when
the call is over, whether or not media ever connected.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from ..errors import ModelConnectError, ModelError
from .model_socket import ModelConnector, ModelSocket

__all__ = ["PreDial"]

logger = logging.getLogger(__name__)


class PreDial:
    """One call's early model socket."""

    def __init__(self, connect_model: ModelConnector) -> None:
        self._connect = connect_model
        self._socket: ModelSocket | None = None
        self._error: ModelError | None = None
        self._settled = trio.Event()  # open, or failed
        self._released = trio.Event()
        self._adopted = False
        #: trio time the socket was open (for logs and measurements).
        self.opened_at: float | None = None

    async def run(self) -> None:
        """Dial, then hold the socket until the bridge is done with it (or we are cancelled)."""
        try:
            async with self._connect() as ws:
                self._socket, self.opened_at = ws, trio.current_time()
                self._settled.set()
                await self._released.wait()
        except ModelError as exc:
            self._error = exc
        except Exception as exc:
            # This task runs in the control plane's per-call nursery: nothing but Cancelled may
            # escape it.  E.g. trio-websocket raises DisconnectionTimeout when it closes a socket
            # the bridge abandoned as a dead link (no close handshake will ever come).
            if self._socket is None:
                self._error = ModelConnectError(f"early model dial failed: {exc!r}")
            else:
                logger.warning("early model socket did not close cleanly: %r", exc)
        finally:
            self._settled.set()

    def connector(self) -> ModelConnector:
        """The :data:`ModelConnector` for ``run_call``: the early socket first, then fresh ones."""
        return self._open

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[ModelSocket]:
        if self._adopted:
            async with self._connect() as ws:
                yield ws
            return
        self._adopted = True
        await self._settled.wait()
        if self._socket is None:
            self._released.set()
            raise self._error or ModelError("early model dial ended without a socket")
        try:
            yield self._socket
        finally:
            # The owner task (run) exits the socket's context; the adapter bounds that.  The
            # bridge has already closed it, or abandoned a dead link, and does not wait.
            self._released.set()
