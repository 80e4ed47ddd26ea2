"""Call Automation's REST API and JWKS as one ``httpx.MockTransport``, and the events ACS sends.

Tokens come from the package's own signer, :class:`acs_trio.testing.tokens.TokenSigner`.
"""

from __future__ import annotations

from typing import Any

import trio

from acs_trio.testing.tokens import OFFICIAL_ISSUER, TokenSigner

ISSUER = OFFICIAL_ISSUER
RESOURCE_ID = "11111111-2222-3333-4444-555555555555"
JWKS_URL = "https://acs-keys.test/calling/keys"


def signer() -> TokenSigner:
    """The test resource's signer; its key is generated once per test session (see ``rsa_key``)."""
    return TokenSigner(audience=RESOURCE_ID, kid="key-1")


class FakeAcsService:
    """Call Automation REST + the JWKS behind one ``httpx.MockTransport`` (``.transport``).

    Records every request; answers ``…:answer`` with ``conn-<n>``, ``…:terminate`` with 204 and
    the JWKS URL with ``signer``'s keys.  ``answer_status`` makes answers fail.
    """

    def __init__(self) -> None:
        self.signer = signer()
        self.answers: list[dict[str, Any]] = []
        self.hang_ups: list[str] = []
        self.answer_status = 200
        self.jwks_status = 200
        #: Raw JSON bodies for the next 200 answers (first used first), e.g. ``b"null"``.
        self.answer_bodies: list[bytes] = []
        #: Statuses for the next hang-ups (first used first); 204 once this is empty.
        self.hang_up_statuses: list[int] = []
        self.hang_up_attempts: list[str] = []
        self.answer_gate: Any = None  # a trio.Event the answer waits on, if set
        #: ``:transferToParticipant`` bodies, with the trio time they arrived.
        self.transfers: list[tuple[float, dict[str, Any]]] = []
        self.transfer_status = 202
        #: Trio times of each successful ``:terminate``.
        self.hang_up_times: list[float] = []
        self.answer_seen = trio.Event()

    @property
    def transport(self) -> Any:
        import httpx

        return httpx.MockTransport(self._handle)

    async def _handle(self, request: Any) -> Any:
        import json

        import httpx

        if str(request.url) == JWKS_URL:
            if self.jwks_status != 200:
                return httpx.Response(self.jwks_status)
            return httpx.Response(200, json=self.signer.jwks())
        path = request.url.path
        if path == "/calling/callConnections:answer":
            body = json.loads(request.content)
            self.answers.append(body)
            self.answer_seen.set()
            if self.answer_gate is not None:
                await self.answer_gate.wait()
            if self.answer_status != 200:
                error = {"error": {"code": "8523", "message": "Invalid request (stale context)"}}
                return httpx.Response(self.answer_status, json=error)
            if self.answer_bodies:
                return httpx.Response(
                    200,
                    content=self.answer_bodies.pop(0),
                    headers={"Content-Type": "application/json"},
                )
            n = len(self.answers)
            return httpx.Response(
                200,
                json={
                    "callConnectionId": f"conn-{n}",
                    "serverCallId": f"server-{n}",
                    "correlationId": f"corr-{n}",
                    "callConnectionState": "connecting",
                },
            )
        if path.endswith(":terminate"):
            connection = path.removeprefix("/calling/callConnections/").removesuffix(":terminate")
            self.hang_up_attempts.append(connection)
            status = self.hang_up_statuses.pop(0) if self.hang_up_statuses else 204
            if status != 204:
                error = {"error": {"code": str(status), "message": "scripted failure"}}
                return httpx.Response(status, json=error)
            self.hang_ups.append(connection)
            self.hang_up_times.append(trio.current_time())
            return httpx.Response(204)
        if path.endswith(":transferToParticipant"):
            body = json.loads(request.content)
            self.transfers.append((trio.current_time(), body))
            if self.transfer_status != 202:
                error = {"error": {"code": "8500", "message": "transfer refused"}}
                return httpx.Response(self.transfer_status, json=error)
            return httpx.Response(202, json={"operationContext": body.get("operationContext")})
        return httpx.Response(404, json={"error": {"code": "NotFound", "message": path}})

    def token_of(self, n: int) -> str:
        """The per-call token of the n-th answered call (1-based), read from its callbackUri."""
        return str(self.answers[n - 1]["callbackUri"]).rsplit("/", 1)[1]


def incoming_call_event(
    event_id: str, context: str, correlation_id: str = "corr-x"
) -> dict[str, Any]:
    """Event Grid schema IncomingCall (docs/protocols/acs.md §1.3)."""
    return {
        "id": event_id,
        "topic": "/subscriptions/x/resourceGroups/g/providers/Microsoft.Communication/"
        "communicationServices/acs",
        "subject": "/caller/4:+14255550123/recipient/4:+14255550100",
        "data": {
            "to": {
                "kind": "phoneNumber",
                "rawId": "4:+14255550100",
                "phoneNumber": {"value": "+14255550100"},
            },
            "from": {
                "kind": "phoneNumber",
                "rawId": "4:+14255550123",
                "phoneNumber": {"value": "+14255550123"},
            },
            "serverCallId": f"server-call-{event_id}",
            "callerDisplayName": "",
            "incomingCallContext": context,
            "correlationId": correlation_id,
        },
        "eventType": "Microsoft.Communication.IncomingCall",
        "dataVersion": "1.0",
        "metadataVersion": "1",
        "eventTime": "2026-01-01T00:00:00Z",
    }


def callback_event(name: str, call_connection_id: str, **data: Any) -> dict[str, Any]:
    """A Call Automation CloudEvent (docs/protocols/acs.md §3)."""
    source = f"calling/callConnections/{call_connection_id}/{name}"
    return {
        "id": f"evt-{name}-{call_connection_id}",
        "source": source,
        "type": f"Microsoft.Communication.{name}",
        "data": {"callConnectionId": call_connection_id, "correlationId": "corr", **data},
        "time": "2026-01-01T00:00:00Z",
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "subject": source,
    }
