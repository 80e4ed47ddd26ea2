"""The stand-in for Call Automation's token service: RSA keys, their JWKS, a signer.

Real ACS signs every callback POST (5 min lifetime) and every media WebSocket handshake (24 h
lifetime) with RS256; the issuer is ``https://acscallautomation.communication.azure.com`` and the
audience is the resource's immutable id (docs/protocols/acs.md §5.1, §5.2).  The server fetches the
public keys from a JWKS URL and selects one by ``kid``, so the simulator, the benchmarks and the
tests all sign with :class:`TokenSigner` and serve its :meth:`~TokenSigner.jwks`.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
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
    "rsa_key",
]

#: docs/protocols/acs.md §5.1: the official Call Automation issuer.
OFFICIAL_ISSUER = "https://acscallautomation.communication.azure.com"
#: docs/protocols/acs.md §5.1 ("lifetime 5 minutes, new token per event").
CALLBACK_TOKEN_LIFETIME_S = 5 * 60
#: docs/protocols/acs.md §5.2 ("JWT lifetime 24 hours; new token per connection request").
WEBSOCKET_TOKEN_LIFETIME_S = 24 * 3600


@functools.cache
def rsa_key(name: str) -> rsa.RSAPrivateKey:
    """The 2048-bit key called ``name``, generated once per process (generation takes ~0.1–0.4 s)."""
    return _new_key()


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class TokenSigner:
    """Signs ACS-style JWTs for one resource and publishes the matching JWKS.

    It publishes one key per ``kid`` and signs with the current one, :attr:`kid`;
    :meth:`rotate` publishes a new key and signs with it from then on (the old keys stay
    published, as during a real rotation).  A named ``kid`` gets :func:`rsa_key` of that name, so a
    test suite does not generate a key per test; without a name the key is fresh and its ``kid`` is
    a thumbprint.  :attr:`fetches` counts :meth:`jwks` calls: the server's key cache is judged by it.
    """

    def __init__(
        self, *, audience: str, issuer: str = OFFICIAL_ISSUER, kid: str | None = None
    ) -> None:
        self.audience = audience
        self.issuer = issuer
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.fetches = 0
        self.kid = self.rotate(kid)

    def rotate(self, kid: str | None = None) -> str:
        """Publish a new key, sign with it from now on, and return its ``kid``."""
        key = rsa_key(kid) if kid is not None else _new_key()
        if kid is None:
            modulus = key.public_key().public_numbers().n.to_bytes(256, "big")
            digest = hashlib.sha256(modulus).digest()[:12]
            kid = base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
        self.keys[kid] = key
        self.kid = kid
        return kid

    def jwks(self) -> dict[str, Any]:
        """The JSON served at ``/calling/keys``: ``{"keys": [<RSA public JWK>, ...]}``."""
        self.fetches += 1
        keys = []
        for kid, key in self.keys.items():
            jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
            keys.append(jwk)
        return {"keys": keys}

    def sign(
        self,
        lifetime_s: float = CALLBACK_TOKEN_LIFETIME_S,
        *,
        now: dt.datetime | None = None,
        kid: str | None = None,
        key: rsa.RSAPrivateKey | None = None,
        issuer: str | None = None,
        audience: str | None = None,
    ) -> str:
        """A fresh token valid for ``lifetime_s`` seconds from ``now``.

        ``kid``/``key``/``issuer``/``audience`` override this signer's for tokens a server must
        refuse: an unpublished ``kid``, a ``key`` that is not the published one, another issuer or
        audience.  ``iat``/``nbf``/``exp`` are real wall-clock epoch seconds: the server checks
        them against its own clock, so this is one of the places where a wire value needs the
        wall clock.
        """
        kid = kid if kid is not None else self.kid
        issued = now if now is not None else dt.datetime.now(dt.UTC)
        claims = {
            "iss": issuer if issuer is not None else self.issuer,
            "aud": audience if audience is not None else self.audience,
            "iat": issued,
            "nbf": issued,
            "exp": issued + dt.timedelta(seconds=lifetime_s),
            "jti": str(uuid.uuid4()),
        }
        signing_key = key if key is not None else self.keys.get(kid, self.keys[self.kid])
        return jwt.encode(claims, signing_key, algorithm="RS256", headers={"kid": kid})

    def bearer(self, lifetime_s: float = CALLBACK_TOKEN_LIFETIME_S, **overrides: Any) -> str:
        """``Bearer <token>``: an ``Authorization`` header value."""
        return f"Bearer {self.sign(lifetime_s, **overrides)}"
