"""The Call Automation REST endpoint and JWKS the server talks to, on aiohttp over local TLS.

Only what a call's life needs (docs/protocols/acs.md §2.2, §2.4, §5.1): ``POST
/calling/callConnections:answer?api-version=…`` → 200 with ``CallConnectionProperties``;
``POST /calling/callConnections/{id}:terminate`` and ``DELETE /calling/callConnections/{id}``
→ 204; ``GET /calling/keys`` → the JWKS.  Unlike acs_trio's simulator it does not check the SDK's
HMAC signature: that is the simulator's job, and here every microsecond of generator CPU counts.
The answer request's body tells the call its ``callbackUri`` and ``transportUrl``.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from aiohttp import web
from metrics import Sink, now_ns

if TYPE_CHECKING:
    from caller import Call


class FakeAcs:
    def __init__(
        self, sink: Sink, signer: Any, by_context: dict[str, Call], by_connection: dict[str, Call]
    ) -> None:
        self.sink = sink
        self.signer = signer
        self.by_context = by_context
        self.by_connection = by_connection
        self.runner: web.AppRunner | None = None
        self.answers = 0
        self.hang_ups = 0

    async def start(self, cert: str, key: str, host: str = "127.0.0.1") -> int:
        app = web.Application()
        app.router.add_post("/calling/callConnections:answer", self.answer)
        app.router.add_post("/calling/callConnections/{action}", self.action)
        app.router.add_delete("/calling/callConnections/{cid}", self.delete)
        app.router.add_get("/calling/keys", self.keys)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        site = web.TCPSite(self.runner, host, 0, ssl_context=context)
        await site.start()
        server = site._server
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def keys(self, request: web.Request) -> web.Response:
        return web.json_response(self.signer.jwks())

    async def answer(self, request: web.Request) -> web.Response:
        if "api-version" not in request.query:
            return _error(400, "MissingApiVersionParameter", "api-version is required")
        body = await request.json()
        call = self.by_context.get(str(body.get("incomingCallContext")))
        if call is None:
            self.sink.events.add("answer_for_unknown_context")
            return _error(400, "BadRequest", "incomingCallContext is unknown or expired")
        self.answers += 1
        media = body.get("mediaStreamingOptions") or {}
        call.answered(str(body.get("callbackUri", "")), str(media.get("transportUrl", "")), media)
        props = {
            "callConnectionId": call.connection_id,
            "serverCallId": call.server_call_id,
            "targets": [call.caller_identifier],
            "callConnectionState": "connecting",
            "callbackUri": body.get("callbackUri"),
            "sourceCallerIdNumber": {"value": call.caller_number},
            "source": call.caller_identifier,
            "correlationId": call.correlation_id,
            "answeredFor": {"value": "+18005550100"},
            "mediaStreamingSubscription": {
                "id": call.subscription_id,
                "state": "inactive",
                "subscribedContentTypes": ["audio"],
            },
        }
        return web.json_response(props)

    async def action(self, request: web.Request) -> web.Response:
        cid, _, verb = request.match_info["action"].partition(":")
        if verb != "terminate":
            return _error(404, "NotFound", f"no action {verb}")
        return self.hang_up(cid)

    async def delete(self, request: web.Request) -> web.Response:
        return self.hang_up(request.match_info["cid"])

    def hang_up(self, cid: str) -> web.Response:
        call = self.by_connection.get(cid)
        if call is None:
            return _error(404, "NotFound", "call connection not found")
        self.hang_ups += 1
        call.server_hung_up(now_ns())
        return web.Response(status=204)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
