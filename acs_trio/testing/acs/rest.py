"""The fake Call Automation REST service and JWKS, as a raw ASGI app for hypercorn.

Routes, methods, ``api-version`` and success codes are those of the SDK's generated client
(``_generated/operations/_operations.py``, 1.6.0): answer → 200 with ``CallConnectionProperties``,
terminate (``hang_up(True)``) → 204, DELETE (``hang_up(False)``) → 204, GET → 200.  Errors use the
``CommunicationErrorResponse`` shape ``{"error": {"code", "message"}}``.  Every
``/calling/callConnections`` request must carry the SDK's HMAC signature (see
:mod:`.hmac_auth`); the JWKS at ``/calling/keys`` is public, as in production (§5.1).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio

from ...errors import AuthError
from ..tokens import TokenSigner
from .hmac_auth import verify_hmac_request
from .registry import AnswerRequest, CallRegistry, SimCall

__all__ = ["FakeAcsApp"]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

MAX_BODY_BYTES = 256 * 1024
_CONNECTION = re.compile(r"^/calling/callConnections/(?P<id>[^/:]+)(?P<action>:terminate)?$")
_FORMATS = {"pcm16KMono", "pcm24KMono"}  # docs/protocols/acs.md §2.3


class BadRequest(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class FakeAcsApp:
    """ASGI app: one instance per simulated ACS resource."""

    def __init__(self, *, registry: CallRegistry, signer: TokenSigner, access_key: str) -> None:
        self.registry = registry
        self.signer = signer
        self.access_key = access_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        path: str = scope["path"]
        method: str = scope["method"]
        after: SimCall | None = None
        payload: dict[str, Any] | None
        try:
            if body is None:
                raise BadRequest(413, "RequestTooLarge", "request body too large")
            if method == "GET" and path == "/calling/keys":
                status, payload = 200, self.signer.jwks()
            elif path.startswith("/calling/callConnections"):
                self._authenticate(scope, body)
                status, payload, after = self._call_connections(method, path, body)
            else:
                raise BadRequest(404, "NotFound", f"no route {method} {path}")
        except BadRequest as exc:
            call = _call_of(self.registry, path, body)
            problem = f"{method} {path} → {exc.status} {exc.code}: {exc.message}"
            logger.warning("fake ACS refused %s", problem)
            (call.rest_problems if call else self.registry.unmatched_problems).append(problem)
            status, payload = exc.status, {"error": {"code": exc.code, "message": exc.message}}
        await _respond(send, status, payload)
        if after is not None:  # tell the call script only once the server has its answer
            after.answered.set()

    def _authenticate(self, scope: Scope, body: bytes) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        raw_path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        path_and_query = raw_path.decode("latin-1") + (
            "?" + query.decode("latin-1") if query else ""
        )
        if "api-version" not in parse_qs(query.decode("latin-1")):
            raise BadRequest(400, "MissingApiVersionParameter", "api-version is required")
        try:
            verify_hmac_request(
                method=scope["method"],
                path_and_query=path_and_query,
                headers=headers,
                body=body,
                access_key=self.access_key,
            )
        except AuthError as exc:
            raise BadRequest(401, "Unauthorized", str(exc)) from exc

    def _call_connections(
        self, method: str, path: str, body: bytes
    ) -> tuple[int, dict[str, Any] | None, SimCall | None]:
        if path == "/calling/callConnections:answer" and method == "POST":
            call = self._answer(_json_object(body))
            return 200, call.properties(), call
        if path == "/calling/callConnections:reject" and method == "POST":
            self._reject(_json_object(body))
            return 204, None, None
        match = _CONNECTION.match(path)
        found = self.registry.by_connection(match["id"]) if match else None
        if match is None or found is None or found.state == "none":
            raise BadRequest(404, "NotFound", "call connection not found")
        if method == "GET" and not match["action"]:
            return 200, found.properties(), None
        if found.state == "disconnected":
            raise BadRequest(404, "NotFound", "call already ended")
        if method == "POST" and match["action"] == ":terminate":
            self._hang_up(found, "terminate (hang_up for everyone)")
            return 204, None, None
        if method == "DELETE" and not match["action"]:
            self._hang_up(found, "DELETE (hang_up own leg)")
            return 204, None, None
        raise BadRequest(405, "MethodNotAllowed", f"{method} not allowed here")

    def _hang_up(self, call: SimCall, via: str) -> None:
        call.state = "disconnected"
        call.hang_up_via = via
        call.hang_up_at = trio.current_time()
        call.hung_up.set()

    def _reject(self, body: dict[str, Any]) -> None:
        """``RejectCallRequest``: a ringing call is refused (``callRejectReason`` busy/forbidden/none)."""
        context = body.get("incomingCallContext")
        call = self.registry.by_context(context) if isinstance(context, str) else None
        if call is None:
            raise BadRequest(400, "BadRequest", "incomingCallContext is unknown or expired")
        if call.state != "none":
            raise BadRequest(400, "BadRequest", "call already answered with this context")
        reason = body.get("callRejectReason", "none")
        if reason not in {"none", "busy", "forbidden"}:
            raise BadRequest(400, "BadRequest", "callRejectReason must be none, busy or forbidden")
        call.state = "rejected"
        call.reject_reason = str(reason)
        call.rejected.set()

    def _answer(self, body: dict[str, Any]) -> SimCall:
        """Validate an ``AnswerCallRequest`` (docs/protocols/acs.md §2.2/§2.3) and connect the call."""
        context = body.get("incomingCallContext")
        call = self.registry.by_context(context) if isinstance(context, str) else None
        if call is None:
            raise BadRequest(400, "BadRequest", "incomingCallContext is unknown or expired")
        if call.state != "none":
            raise BadRequest(400, "BadRequest", "call already answered with this context")
        callback = body.get("callbackUri")
        if not isinstance(callback, str) or urlsplit(callback).scheme not in {"http", "https"}:
            raise BadRequest(400, "BadRequest", "callbackUri must be an http(s) URL")
        media = body.get("mediaStreamingOptions")
        if not isinstance(media, dict):
            raise BadRequest(
                400, "BadRequest", "mediaStreamingOptions is required by the simulator"
            )
        transport = media.get("transportUrl")
        checks = [
            (media.get("transportType") == "websocket", "transportType must be 'websocket'"),
            (
                isinstance(transport, str) and urlsplit(transport).scheme in {"ws", "wss"},
                "transportUrl must be a ws:// or wss:// URL",
            ),
            (media.get("contentType") == "audio", "contentType must be 'audio'"),
            (
                media.get("audioChannelType") in {"mixed", "unmixed"},
                "audioChannelType must be 'mixed' or 'unmixed'",
            ),
            (
                media.get("audioFormat", "pcm16KMono") in _FORMATS,
                f"audioFormat must be one of {sorted(_FORMATS)}",
            ),
            (
                media.get("startMediaStreaming") is True,
                "startMediaStreaming must be true (the simulator does not implement "
                "start_media_streaming)",
            ),
            (
                media.get("enableBidirectional") is True,
                "enableBidirectional must be true (audio cannot be sent back otherwise)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise BadRequest(400, "BadRequest", message)
        operation_context = body.get("operationContext")
        call.answer = AnswerRequest(
            callback_uri=str(callback),
            transport_url=str(transport),
            audio_format=str(media.get("audioFormat", "pcm16KMono")),
            audio_channel_type=str(media["audioChannelType"]),
            operation_context=operation_context if isinstance(operation_context, str) else None,
            received_at=trio.current_time(),
        )
        call.state = "connecting"
        return call


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise BadRequest(400, "BadRequest", "body is not JSON") from exc
    if not isinstance(value, dict):
        raise BadRequest(400, "BadRequest", "body is not a JSON object")
    return value


def _call_of(registry: CallRegistry, path: str, body: bytes | None) -> SimCall | None:
    """Best-effort: which call a refused request was about, so its report can say why."""
    match = _CONNECTION.match(path)
    if match:
        return registry.by_connection(match["id"])
    try:
        context = json.loads(body or b"").get("incomingCallContext")
    except (ValueError, AttributeError):
        return None
    return registry.by_context(context) if isinstance(context, str) else None


async def _read_body(receive: Receive) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _respond(send: Send, status: int, payload: dict[str, Any] | None) -> None:
    body = b"" if payload is None else json.dumps(payload).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    if payload is not None:
        headers.append((b"content-type", b"application/json; charset=utf-8"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
