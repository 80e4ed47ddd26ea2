"""The simulator's stand-in for Call Automation's token service: an RSA key, its JWKS, a signer.

Real ACS signs every callback POST (5 min lifetime) and every media WebSocket handshake (24 h
lifetime) with RS256; the issuer is ``https://acscallautomation.communication.azure.com`` and the
audience is the resource's immutable id (acs-protocol.md §5.1, §5.2).  The server fetches the
public key from a JWKS URL and selects it by ``kid``, so the simulator serves the same shape.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

__all__ = [
    "CALLBACK_TOKEN_LIFETIME_S",
    "OFFICIAL_ISSUER",
    "WEBSOCKET_TOKEN_LIFETIME_S",
    "TokenSigner",
]

#: acs-protocol.md §5.1: the official Call Automation issuer.
OFFICIAL_ISSUER = "https://acscallautomation.communication.azure.com"
#: acs-protocol.md §5.1 ("lifetime 5 minutes, new token per event").
CALLBACK_TOKEN_LIFETIME_S = 5 * 60
#: acs-protocol.md §5.2 ("JWT lifetime 24 hours; new token per connection request").
WEBSOCKET_TOKEN_LIFETIME_S = 24 * 3600


class TokenSigner:
    """Signs ACS-style JWTs for one simulated resource and publishes the matching JWKS."""

    def __init__(self, *, audience: str, issuer: str = OFFICIAL_ISSUER) -> None:
        self.audience = audience
        self.issuer = issuer
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_der = self._key.public_key().public_numbers().n.to_bytes(256, "big")
        digest = hashlib.sha256(public_der).digest()[:12]
        self.kid = base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")

    def jwks(self) -> dict[str, Any]:
        """The JSON served at ``/calling/keys``: ``{"keys": [<RSA public JWK>]}``."""
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "alg": "RS256", "use": "sig"})
        return {"keys": [jwk]}

    def sign(self, lifetime_s: int, *, now: dt.datetime | None = None) -> str:
        """A fresh token valid for ``lifetime_s`` seconds.

        ``iat``/``nbf``/``exp`` are real wall-clock epoch seconds: the server checks them against
        its own clock, so this is one of the places where a wire value needs the wall clock.
        """
        issued = now if now is not None else dt.datetime.now(dt.UTC)
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "iat": issued,
            "nbf": issued,
            "exp": issued + dt.timedelta(seconds=lifetime_s),
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})
