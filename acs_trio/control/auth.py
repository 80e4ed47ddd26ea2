"""Verifying the JWT that Call Automation puts on every callback and media WebSocket.

docs/protocols/acs.md §5.1/§5.2: ``Authorization: Bearer <jwt>``, RS256, issuer
``https://acscallautomation.communication.azure.com``, audience = the ACS resource's *immutable*
id, keys from the JWKS URL (``{"keys": [...]}`` with ``kid``).

Why PyJWT, and why not its ``PyJWKClient``: PyJWT does the signature and claim checks (the
doc's own sample uses it), but ``PyJWKClient`` fetches keys with blocking ``urllib`` inside the
event loop.  So :class:`JwtVerifier` fetches the JWKS itself over the shared httpx client
(:meth:`AcsRest.get_json`), caches the keys by ``kid``, and refreshes the cache when a token
names a ``kid`` it does not know — at most once per ``refresh_interval_s``, so a stream of junk
``kid`` values cannot make us hammer the JWKS URL.  Concurrent misses share one fetch (a lock).
While no keys are cached at all (the fetches so far failed) the limit is ``EMPTY_RETRY_S``
instead, and a token is refused as :class:`KeysUnavailable` (503), never as an unknown ``kid``.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import jwt
import trio

from ..config import (
    JWKS_EMPTY_RETRY_S,
    JWKS_FETCH_TIMEOUT_S,
    JWKS_REFRESH_INTERVAL_S,
    JWT_LEEWAY_S,
)
from ..errors import AcsRestError, AuthError, KeysUnavailable

__all__ = ["JsonFetcher", "JwtVerifier", "KeysUnavailable", "bearer_token"]

logger = logging.getLogger(__name__)

# Clock skew: PyJWT compares exp/nbf with the wall clock (the tokens carry real timestamps, so
# this is the one place in the package where wall time is the right clock).
LEEWAY_S = JWT_LEEWAY_S
REFRESH_INTERVAL_S = JWKS_REFRESH_INTERVAL_S
EMPTY_RETRY_S = JWKS_EMPTY_RETRY_S
FETCH_TIMEOUT_S = JWKS_FETCH_TIMEOUT_S


class JsonFetcher(Protocol):
    async def get_json(self, url: str) -> Any: ...


def bearer_token(authorization: str | None) -> str:
    """The token from an ``Authorization: Bearer <jwt>`` header, or :class:`AuthError`."""
    if not authorization:
        raise AuthError("missing Authorization header")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization header is not 'Bearer <token>'")
    return token.strip()


class JwtVerifier:
    """Checks ACS-issued JWTs against a cached, rate-limited JWKS."""

    def __init__(
        self,
        fetcher: JsonFetcher,
        *,
        jwks_url: str,
        issuer: str,
        audience: str,
        refresh_interval_s: float = REFRESH_INTERVAL_S,
    ) -> None:
        self._fetcher = fetcher
        self._jwks_url = jwks_url
        self._issuer = issuer
        self._audience = audience
        self._refresh_interval_s = refresh_interval_s
        self._keys: dict[str, jwt.PyJWK] = {}
        self._last_fetch: float | None = None
        self._lock = trio.Lock()
        #: How many times the JWKS was fetched (tests and logs).
        self.fetches = 0

    async def verify(self, token: str) -> dict[str, Any]:
        """Return the verified claims, or raise :class:`AuthError` saying why not."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError(f"malformed JWT: {exc}") from None
        if header.get("alg") != "RS256":
            raise AuthError(f"JWT alg {header.get('alg')!r} is not RS256")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("JWT header has no kid")
        key = await self._key_for(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=["RS256"],
                issuer=self._issuer,
                audience=self._audience,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(f"JWT rejected: {type(exc).__name__}: {exc}") from None
        return claims

    async def _key_for(self, kid: str) -> jwt.PyJWK:
        key = self._keys.get(kid)
        if key is not None:
            return key
        async with self._lock:
            key = self._keys.get(kid)  # another task may have refreshed while we waited
            if key is None and self._may_refresh():
                await self._refresh()
                key = self._keys.get(kid)
        if key is None:
            if not self._keys:  # we could not check anything: not the caller's fault
                raise KeysUnavailable("no JWKS keys (the last fetch failed)")
            raise AuthError(f"unknown JWT kid {kid!r}")
        return key

    def _may_refresh(self) -> bool:
        if self._last_fetch is None:
            return True
        interval = self._refresh_interval_s if self._keys else EMPTY_RETRY_S
        return trio.current_time() - self._last_fetch >= interval

    async def _refresh(self) -> None:
        self._last_fetch = trio.current_time()
        self.fetches += 1
        try:
            with trio.fail_after(FETCH_TIMEOUT_S):
                document = await self._fetcher.get_json(self._jwks_url)
        except (AcsRestError, trio.TooSlowError) as exc:
            logger.warning("JWKS fetch from %s failed: %r", self._jwks_url, exc)
            if not self._keys:
                raise KeysUnavailable(f"JWKS unavailable: {exc!r}") from None
            return  # keep the keys we have
        keys = _parse_jwks(document)
        if not keys:
            logger.warning("JWKS from %s has no usable RSA keys", self._jwks_url)
            if not self._keys:
                raise KeysUnavailable("JWKS has no usable keys")
            return
        self._keys = keys
        logger.info("JWKS loaded from %s: kids=%s", self._jwks_url, sorted(keys))


def _parse_jwks(document: Any) -> dict[str, jwt.PyJWK]:
    keys: dict[str, jwt.PyJWK] = {}
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return keys
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("kty") != "RSA" or entry.get("use", "sig") != "sig":
            continue
        try:
            keys[entry["kid"]] = jwt.PyJWK(entry, algorithm="RS256")
        except jwt.PyJWTError as exc:
            logger.warning("JWKS key %r skipped: %s", entry.get("kid"), exc)
    return keys
