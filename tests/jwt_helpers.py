"""A local stand-in for Call Automation's signing keys: RSA keys, a JWKS, and a token maker.

Tokens look like ACS's (acs-protocol.md §5.1): RS256, ``kid`` header, issuer
``https://acscallautomation.communication.azure.com``, audience = the resource's immutable id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import jwt
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://acscallautomation.communication.azure.com"
RESOURCE_ID = "11111111-2222-3333-4444-555555555555"
JWKS_URL = "https://acs-keys.test/calling/keys"


@cache
def rsa_key(name: str) -> rsa.RSAPrivateKey:
    """One key per name, generated once per test session (2048-bit generation is slow-ish)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(kid: str, key: rsa.RSAPrivateKey) -> dict[str, Any]:
    jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid=kid, use="sig", alg="RS256")
    return jwk


@dataclass
class KeySet:
    """The keys the fake JWKS endpoint publishes; ``fetches`` counts requests to it."""

    published: dict[str, rsa.RSAPrivateKey] = field(
        default_factory=lambda: {"key-1": rsa_key("key-1")}
    )
    fetches: int = 0

    def jwks(self) -> dict[str, Any]:
        self.fetches += 1
        return {"keys": [public_jwk(kid, key) for kid, key in self.published.items()]}

    def token(
        self,
        *,
        kid: str = "key-1",
        key: rsa.RSAPrivateKey | None = None,
        issuer: str = ISSUER,
        audience: str = RESOURCE_ID,
        expires_in_s: float = 300,
    ) -> str:
        """A token signed by ``key`` (default: the published key called ``kid``)."""
        now = int(time.time())  # JWT claims are wall-clock timestamps by definition
        signing_key = key if key is not None else self.published.get(kid) or rsa_key(kid)
        claims = {
            "iss": issuer,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + int(expires_in_s),
        }
        return jwt.encode(claims, signing_key, algorithm="RS256", headers={"kid": kid})

    def bearer(self, **kwargs: Any) -> str:
        return f"Bearer {self.token(**kwargs)}"


class FakeAcsService:
    """Call Automation REST + the JWKS behind one ``httpx.MockTransport`` (``.transport``).

    Records every request; answers ``…:answer`` with ``conn-<n>``, ``…:terminate`` with 204 and
    the JWKS URL with :class:`KeySet`'s keys.  ``answer_status`` makes answers fail.
    """

    def __init__(self, keys: KeySet | None = None) -> None:
        self.keys = keys or KeySet()
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
        self.answer_seen = trio.Event()
        #: incomingCallContexts rejected (busy) and (context, target raw id) redirected.
        self.rejects: list[dict[str, Any]] = []
        self.redirects: list[dict[str, Any]] = []

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
            return httpx.Response(200, json=self.keys.jwks())
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
        if path == "/calling/callConnections:reject":
            self.rejects.append(json.loads(request.content))
            return httpx.Response(204)
        if path == "/calling/callConnections:redirect":
            self.redirects.append(json.loads(request.content))
            return httpx.Response(204)
        if path.endswith(":terminate"):
            connection = path.removeprefix("/calling/callConnections/").removesuffix(":terminate")
            self.hang_up_attempts.append(connection)
            status = self.hang_up_statuses.pop(0) if self.hang_up_statuses else 204
            if status != 204:
                error = {"error": {"code": str(status), "message": "scripted failure"}}
                return httpx.Response(status, json=error)
            self.hang_ups.append(connection)
            return httpx.Response(204)
        return httpx.Response(404, json={"error": {"code": "NotFound", "message": path}})

    def token_of(self, n: int) -> str:
        """The per-call token of the n-th answered call (1-based), read from its callbackUri."""
        return str(self.answers[n - 1]["callbackUri"]).rsplit("/", 1)[1]

    def media_token_of(self, n: int) -> str:
        """The n-th answered call's media token, read from its transportUrl."""
        return str(self.answers[n - 1]["mediaStreamingOptions"]["transportUrl"]).rsplit("/", 1)[1]


def incoming_call_event(
    event_id: str, context: str, correlation_id: str = "corr-x"
) -> dict[str, Any]:
    """Event Grid schema IncomingCall (acs-protocol.md §1.3)."""
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
    """A Call Automation CloudEvent (acs-protocol.md §3)."""
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
