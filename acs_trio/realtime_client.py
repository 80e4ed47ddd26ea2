"""Opening the realtime model's WebSocket, with errors translated at the boundary.

URL shapes and headers come from :class:`~acs_trio.config.ModelEndpoint` (realtime-protocol.md
§1: Azure GA ``/openai/v1/realtime?model=<deployment>`` with ``api-key``; OpenAI ``/v1/realtime``
with Bearer; no ``OpenAI-Beta`` header, since we speak GA).  trio-websocket errors become
:class:`~acs_trio.errors.ModelConnectError` / :class:`~acs_trio.errors.ModelRejected` here, so the
call bridge never imports trio-websocket's exception names.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from .config import CallLimits, ModelEndpoint
from .errors import ModelConnectError, ModelRejected

__all__ = ["ModelConnector", "model_connector", "open_model"]

#: What ``run_call`` needs: something that opens one model socket for the length of a call.
ModelConnector = Callable[[], AbstractAsyncContextManager[WebSocketConnection]]

#: Server events waiting in trio-websocket's queue before its reader stops reading the socket.
MODEL_MESSAGE_QUEUE_SIZE = 16


@asynccontextmanager
async def open_model(
    endpoint: ModelEndpoint, limits: CallLimits
) -> AsyncIterator[WebSocketConnection]:
    """Open the model socket; the body runs while it is open.

    Raises:
        ModelRejected: the service answered the handshake with an HTTP error status.
        ModelConnectError: DNS, TCP, TLS or the handshake failed or timed out.
    """
    # wss:// uses the system trust store, which honours SSL_CERT_FILE (local test endpoints).
    ssl_context = ssl.create_default_context() if urlsplit(endpoint.url).scheme == "wss" else None
    headers = [(name.encode(), value.encode()) for name, value in endpoint.headers]
    connected = False
    try:
        async with open_websocket_url(
            endpoint.url,
            ssl_context,
            extra_headers=headers,
            message_queue_size=MODEL_MESSAGE_QUEUE_SIZE,
            max_message_size=limits.max_model_message_bytes,
            connect_timeout=limits.model_connect_timeout_s,
            disconnect_timeout=limits.close_timeout_s,
        ) as ws:
            connected = True
            yield ws
    except ConnectionRejected as exc:
        body = (exc.body or b"")[:300].decode("utf-8", "replace")
        raise ModelRejected(
            f"{endpoint.provider} refused the WebSocket handshake: HTTP {exc.status_code} {body}",
            status_code=exc.status_code,
        ) from exc
    except (HandshakeError, OSError, trio.BrokenResourceError) as exc:
        if connected:
            raise
        raise ModelConnectError(f"cannot connect to {endpoint.provider} model: {exc!r}") from exc


def model_connector(endpoint: ModelEndpoint, limits: CallLimits) -> ModelConnector:
    """A :data:`ModelConnector` for ``endpoint`` (one new socket per call)."""
    return partial(open_model, endpoint, limits)
