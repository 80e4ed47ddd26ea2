"""The realtime model's WebSocket over trio-websocket: the adapter behind :class:`ModelSocket`.

URL shapes and headers come from :class:`~acs_trio.config.ModelEndpoint` (docs/protocols/realtime.md
§1: Azure GA ``/openai/v1/realtime?model=<deployment>`` with ``api-key``; OpenAI ``/v1/realtime``
with Bearer; no ``OpenAI-Beta`` header, since we speak GA).  Every trio-websocket error is
translated here — handshake failures into :class:`~acs_trio.errors.ModelConnectError` /
:class:`~acs_trio.errors.ModelRejected`, a close into :class:`~acs_trio.errors.ModelClosed` — so
the call bridge never sees a trio-websocket name.
"""

from __future__ import annotations

import contextlib
import email.utils
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from ..call.model_socket import ModelConnector
from ..config import MODEL_MESSAGE_QUEUE_SIZE, CallLimits, ModelEndpoint
from ..errors import ModelClosed, ModelConnectError, ModelRejected

__all__ = [
    "WebsocketModelSocket",
    "describe_connect_failure",
    "model_connector",
    "open_model",
    "retry_after",
]


class WebsocketModelSocket:
    """:class:`~acs_trio.call.model_socket.ModelSocket` over a trio-websocket connection."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws

    async def send(self, message: str) -> None:
        try:
            await self._ws.send_message(message)
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def receive(self) -> str | bytes:
        try:
            message: str | bytes = await self._ws.get_message()
        except ConnectionClosed as exc:
            raise _closed(exc) from None
        return message

    async def ping(self) -> None:
        # trio-websocket sends a unique payload and returns when its pong arrives; the caller
        # bounds the wait (a half-open link never answers).
        try:
            await self._ws.ping()
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def close(self, code: int, reason: str) -> None:
        # trio-websocket bounds the handshake with its disconnect_timeout; a peer that is already
        # gone is not an error here.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._ws.aclose(code, reason)


def _closed(exc: ConnectionClosed) -> ModelClosed:
    reason = exc.reason
    code = None if reason is None else reason.code
    text = "" if reason is None else f"{reason.name} {reason.reason or ''}".strip()
    return ModelClosed(f"model socket closed ({code}) {text}".strip(), code=code)


@asynccontextmanager
async def open_model(
    endpoint: ModelEndpoint, limits: CallLimits, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[WebsocketModelSocket]:
    """Open the model socket; the body runs while it is open.

    Raises:
        ModelRejected: the service answered the handshake with an HTTP error status.
        ModelConnectError: DNS, TCP, TLS or the handshake failed or timed out.
    """
    if urlsplit(endpoint.url).scheme == "wss" and ssl_context is None:
        ssl_context = default_ssl_context()
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
            yield WebsocketModelSocket(ws)
    except ConnectionRejected as exc:
        body = (exc.body or b"")[:300].decode("utf-8", "replace")
        raise ModelRejected(
            f"{endpoint.provider} refused the WebSocket handshake: HTTP {exc.status_code} {body}",
            status_code=exc.status_code,
            retry_after_s=retry_after(exc.headers),
        ) from exc
    except (HandshakeError, OSError, trio.BrokenResourceError) as exc:
        if connected:
            raise
        cause, text = describe_connect_failure(exc)
        host = urlsplit(endpoint.url).netloc
        raise ModelConnectError(
            f"cannot connect to the {endpoint.provider} model at {host}: {text}", cause=cause
        ) from exc


def describe_connect_failure(exc: BaseException) -> tuple[str, str]:
    """``(label, text)`` for a failed connect: the root cause, not ``HandshakeError()``.

    trio-websocket raises a bare ``HandshakeError`` whose ``__cause__`` chain holds what really
    happened (``gaierror``, ``ConnectionRefusedError``, ``SSLError``, its own timeout).
    """
    chain: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(chain) < 16:
        current = todo.pop(0)
        if current in chain:
            continue
        chain.append(current)
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        elif current.__cause__ or current.__context__:
            todo.append(current.__cause__ or current.__context__)  # type: ignore[arg-type]
    texts = [str(e) for e in chain if str(e) and not isinstance(e, BaseExceptionGroup)]
    text = "; ".join(dict.fromkeys(texts)) or type(exc).__name__
    if any(isinstance(e, ConnectionTimeout | trio.TooSlowError | TimeoutError) for e in chain):
        return "timeout", f"timed out ({text})"
    if any(isinstance(e, socket.gaierror) for e in chain):
        return "dns", f"DNS lookup failed ({text})"
    if any(isinstance(e, ssl.SSLError) for e in chain):
        return "tls", f"TLS failed ({text})"
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "refused", f"connection refused ({text})"
    return "network", text


def retry_after(headers: tuple[tuple[bytes, bytes], ...] | None) -> float | None:
    """``Retry-After`` in seconds (RFC 9110 §10.2.3: delay-seconds or an HTTP-date), if any."""
    for name, value in headers or ():
        if name.lower() != b"retry-after":
            continue
        text = value.decode("latin-1").strip()
        if text.isdigit():
            return float(text)
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())
    return None


def default_ssl_context() -> ssl.SSLContext:
    """The system trust store (honours ``SSL_CERT_FILE``).

    Parsing the CA bundle costs 20–30 ms of blocking work, so :func:`model_connector` builds it
    once per process, never per call.
    """
    return ssl.create_default_context()


def model_connector(endpoint: ModelEndpoint, limits: CallLimits) -> ModelConnector:
    """A :data:`ModelConnector` for ``endpoint`` (one new socket per call, one TLS context)."""
    context = default_ssl_context() if urlsplit(endpoint.url).scheme == "wss" else None
    return partial(open_model, endpoint, limits, context)
