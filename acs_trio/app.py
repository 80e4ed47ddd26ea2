"""The Quart-Trio application: webhook routes, the media WebSocket route, health and readiness.

Routes only; the call lifecycle lives in :mod:`acs_trio.registry`, decoding in
:mod:`acs_trio.webhook`, token checks in :mod:`acs_trio.auth`, REST in :mod:`acs_trio.acs_rest`,
and the call itself in :func:`acs_trio.call.run_call`.  docs/control-plane.md has the route table
and the bad-input policy.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import trio
from hypercorn.utils import UnexpectedMessageError
from quart import Response, request, websocket
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIWebsocketConnection
from quart_trio.wrappers.websocket import TrioWebsocket

from .acs_rest import HttpTransport, open_acs_rest
from .auth import JwtVerifier, KeysUnavailable, bearer_token
from .config import ModelEndpoint, Settings
from .errors import AuthError, MediaClosed
from .lifecycle import CallSummary
from .registry import Admission, ControlPlane, ControlTimeouts
from .webhook import (
    BadBody,
    IncomingCall,
    Skipped,
    ValidationRequest,
    decode_callbacks,
    decode_event_grid,
    load_json_array,
)

__all__ = ["AcsTrioApp", "QuartMediaSocket", "create_app"]

logger = logging.getLogger(__name__)

#: Webhook bodies above this get 413 (Quart's MAX_CONTENT_LENGTH).
MAX_BODY_BYTES = 1024 * 1024
#: After ACS disconnects the media socket, the route has this long to finish before it is cancelled.
MEDIA_DISCONNECT_GRACE_S = 5.0

RunCall = Callable[..., Awaitable[CallSummary]]


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
    listens to it, and it costs a blinker dispatch per 20 ms frame (performance-notes.md).
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


class QuartMediaSocket:
    """:class:`~acs_trio.media_socket.MediaSocket` over the route's (accepted) quart websocket."""

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


class _Runtime:
    """What exists only while the app is serving (lifespan): REST client, verifier, calls."""

    def __init__(
        self,
        settings: Settings,
        http_transport: HttpTransport | None,
        connect_model: Any,
        timeouts: ControlTimeouts,
    ) -> None:
        self.settings = settings
        self.acs = settings.require_acs()
        self._http_transport = http_transport
        self._timeouts = timeouts
        self.connect_model = connect_model
        self.plane: ControlPlane | None = None
        self.verifier: JwtVerifier | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with open_acs_rest(
            self.acs.connection_string, transport=self._http_transport
        ) as rest:
            self.verifier = JwtVerifier(
                rest,
                jwks_url=self.acs.jwks_url,
                issuer=self.acs.jwt_issuer,
                audience=self.acs.resource_id,
            )
            plane = ControlPlane(
                rest,
                public_base_url=self.acs.public_base_url,
                max_concurrent_calls=self.settings.server.max_concurrent_calls,
                timeouts=self._timeouts,
            )
            async with trio.open_nursery() as nursery:
                if self.connect_model is None:
                    self.connect_model = await self._model_connector(nursery)
                self.plane = plane
                await nursery.start(plane.run)
                task_status.started()
                await plane.finished.wait()  # stop(): drained, closed, every supervisor done
                nursery.cancel_scope.cancel()  # the local peer, if any

    async def _model_connector(self, nursery: trio.Nursery) -> Any:
        from .realtime_client import model_connector

        endpoint = self.settings.model
        if endpoint is None:
            from .local_peer.server import serve_local_peer

            url = await nursery.start(serve_local_peer)
            logger.warning(
                "NO REALTIME MODEL CONFIGURED: calls go to the embedded LOCAL TEST PEER at %s, "
                "not a real model (set AZURE_OPENAI_ENDPOINT, OPENAI_API_KEY or REALTIME_URL)",
                url,
            )
            endpoint = ModelEndpoint(url=url, provider="local test peer")
        return model_connector(endpoint, self.settings.limits)

    async def stop(self) -> None:
        if self.plane is not None:
            await self.plane.drain(self.settings.server.shutdown_grace_s)
            self.plane.close()

    @property
    def ready(self) -> bool:
        return self.plane is not None and self.plane.ready

    async def verify_jwt(self, authorization: str | None) -> None:
        """Raise :class:`AuthError` (bad token) or :class:`KeysUnavailable` (cannot check now)."""
        if self.verifier is None:
            raise KeysUnavailable("not ready: no JWT verifier yet")
        await self.verifier.verify(bearer_token(authorization))

    async def authenticate(self, authorization: str | None) -> Response | None:
        """For HTTP callbacks: None if the ACS JWT verifies, else 401 (503 without keys)."""
        try:
            await self.verify_jwt(authorization)
        except KeysUnavailable as exc:
            logger.warning("%s refused: %s", request_path(), exc)
            return Response("cannot verify tokens right now\n", 503)
        except AuthError as exc:
            logger.warning("%s refused: %s", request_path(), exc)
            return Response("unauthorized\n", 401)
        return None


def request_path() -> str:
    """The path for log lines, with the per-call token cut short (it is a secret)."""
    from quart import has_websocket_context

    path: str = websocket.path if has_websocket_context() else request.path
    head, sep, token = path.rpartition("/")
    return f"{head}/{token[:4]}…" if sep and len(token) > 16 else path


async def _json_events(max_bytes: int = MAX_BODY_BYTES) -> list[Any] | Response:
    mimetype = request.mimetype
    if mimetype and "json" not in mimetype:
        return Response(f"unsupported content type {mimetype}\n", 415)
    if request.content_length is not None and request.content_length > max_bytes:
        return Response("body too large\n", 413)
    # MAX_CONTENT_LENGTH → 413 for chunked bodies too
    body = cast(bytes, await request.get_data(as_text=False))
    try:
        return load_json_array(body)
    except BadBody as exc:
        logger.warning("%s: bad body: %s", request_path(), exc)
        return Response(f"{exc}\n", 400)


def create_app(
    settings: Settings | None = None,
    *,
    http_transport: HttpTransport | None = None,
    run_call: RunCall | None = None,
    connect_model: Any = None,
    timeouts: ControlTimeouts | None = None,
) -> AcsTrioApp:
    """Build the app.  ``hypercorn --worker-class trio 'acs_trio.app:create_app()'`` works as is.

    ``http_transport`` replaces the network for ACS REST and JWKS (tests pass
    ``httpx.MockTransport``); ``run_call``/``connect_model`` replace the call bridge / model socket.
    """
    settings = Settings.from_env() if settings is None else settings
    if run_call is None:
        from .call import run_call as real_run_call

        run_call = real_run_call
    call_runner: RunCall = run_call
    timeouts = ControlTimeouts() if timeouts is None else timeouts
    rt = _Runtime(settings, http_transport, connect_model, timeouts)
    app = AcsTrioApp(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # quart-trio puts this deadline on the lifespan nursery at shutdown: room for the drain.
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = (
        settings.server.shutdown_grace_s + timeouts.hang_up_total_s + 10
    )
    app.extensions["acs_trio"] = rt

    @app.before_serving
    async def start() -> None:
        await app.nursery.start(rt.serve)

    @app.after_serving
    async def stop() -> None:
        await rt.stop()

    # Route functions are async even without an await: Quart runs sync views in a thread.
    @app.get("/healthz")
    async def healthz() -> dict[str, object]:  # noqa: ASYNC124 - Quart runs sync views in threads
        # Liveness, plus what an operator (and the leak check in bench/) wants to see.
        plane = rt.plane
        return {
            "status": "ok",
            "calls": 0 if plane is None else len(plane.calls),
            "draining": False if plane is None else plane.draining,
        }

    @app.get("/readyz")
    async def readyz() -> Response:  # noqa: ASYNC124 - Quart runs sync views in threads
        return Response("ready\n", 200) if rt.ready else Response("not ready\n", 503)

    @app.route("/api/incomingCall", methods=["OPTIONS"], provide_automatic_options=False)
    async def incoming_call_handshake() -> Response:  # noqa: ASYNC124 - Quart runs sync views in threads
        # CloudEvents abuse protection (acs-protocol.md §1.1, Event Grid webhook-event-delivery).
        origin = request.headers.get("WebHook-Request-Origin")
        if not origin:
            return Response("missing WebHook-Request-Origin\n", 400)
        logger.info("CloudEvents handshake from %s", origin)
        headers = {"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*"}
        return Response("", 200, headers=headers)

    @app.post("/api/incomingCall")
    async def incoming_call() -> Response | dict[str, str]:
        events = await _json_events()
        if isinstance(events, Response):
            return events
        validation: str | None = None
        for item in decode_event_grid(events):
            if isinstance(item, ValidationRequest):
                logger.info("Event Grid subscription validation (event %s)", item.event_id)
                validation = validation or item.validation_code
            elif isinstance(item, IncomingCall):
                outcome = rt.plane.admit(item) if rt.plane is not None else Admission.NOT_READY
                log = (
                    logger.info
                    if outcome in {Admission.ANSWERING, Admission.DUPLICATE}
                    else logger.warning
                )
                log(
                    "IncomingCall event=%s corr=%s server_call_id=%s caller=%s: %s",
                    item.event_id,
                    item.correlation_id or "-",
                    item.server_call_id or "-",
                    item.caller,
                    outcome,
                )
            else:
                _log_skipped("incomingCall", item)
        if validation is not None:
            return {"validationResponse": validation}
        return Response("", 200)

    @app.post("/api/callbacks/<token>")
    async def callbacks(token: str) -> Response:
        refusal = await rt.authenticate(request.headers.get("Authorization"))
        if refusal is not None:
            return refusal
        events = await _json_events()
        if isinstance(events, Response):
            return events
        for item in decode_callbacks(events):
            if isinstance(item, Skipped):
                _log_skipped(request_path(), item)
            elif rt.plane is not None:
                rt.plane.on_callback(token, item)
        return Response("", 200)

    @app.websocket("/ws/<token>")
    async def media(token: str) -> Response | None:
        ws = cast(MediaWebsocket, cast(Any, websocket)._get_current_object())
        plane = rt.plane
        if plane is None:
            return Response("not ready\n", 503)
        if token not in plane.calls:  # before any JWKS work: junk URLs cost nothing
            logger.warning("%s refused: unknown or finished call token", request_path())
            return Response("forbidden\n", 403)
        # acs-protocol.md §5.2: the doc's prose says "Authentication header", its sample reads
        # Authorization; take either.
        authorization = ws.headers.get("Authorization") or ws.headers.get("Authentication")
        try:
            await rt.verify_jwt(authorization)
        except KeysUnavailable as exc:
            # §5.2: a failed check is refused (HTTP 401 below); "other errors" close with 1011.
            logger.warning("%s refused with close 1011: %s", request_path(), exc)
            with contextlib.suppress(
                UnexpectedMessageError, RuntimeError, trio.BrokenResourceError
            ):
                await ws.accept()
                await ws.close(1011, "cannot verify tokens right now")
            return None
        except AuthError as exc:
            logger.warning("%s refused: %s", request_path(), exc)
            return Response("unauthorized\n", 401)
        record = plane.claim_media(token, ws.headers.get("x-ms-call-connection-id", ""))
        if isinstance(record, str):
            logger.warning("%s refused: %s", request_path(), record)
            return Response("forbidden\n", 403)
        if "permessage-deflate" in ws.headers.get("Sec-WebSocket-Extensions", ""):
            # hypercorn 0.18 always accepts it when offered (no switch): CPU for little gain.
            logger.info("%s ACS offered permessage-deflate; hypercorn will accept it", record.ids)
        logger.info(
            "%s media socket connected (x-ms-call-correlation-id=%s)",
            record.ids,
            ws.headers.get("x-ms-call-correlation-id", "-"),
        )
        try:
            # Inside the try: a failed or cancelled accept must still report media_done.
            await ws.accept()
            record.summary = await call_runner(
                QuartMediaSocket(ws),
                rt.connect_model,
                handle=record.handle,
                agent=settings.agent,
                limits=settings.limits,
            )
        finally:
            record.media_done.set()
        return None

    return app


def _log_skipped(where: str, item: Skipped) -> None:
    logger.warning(
        "%s: event %s (%s) ignored: %s", where, item.event_id, item.event_type, item.reason
    )
