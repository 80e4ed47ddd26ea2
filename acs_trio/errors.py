"""The package's one exception tree.

Third-party errors (trio-websocket, httpx, azure-core, PyJWT) are translated into these where they
enter the code, in the manner of httpx's ``map_httpcore_exceptions``, so callers match on our
names and never on a dependency's::

    AcsTrioError
    ├── ConfigError                 a setting is missing or invalid (raised at start-up)
    ├── ProtocolError               a peer sent something that breaks its documented wire format
    ├── MediaClosed                 the ACS media WebSocket is closed (hang-up or our own close)
    ├── ModelError                  the realtime model link
    │   ├── ModelConnectError       could not open the socket (DNS, TCP, TLS, timeout)
    │   ├── ModelRejected           the handshake was refused (HTTP status from the service)
    │   └── ModelClosed             the open socket closed
    ├── AcsRestError                a Call Automation REST call failed
    ├── AuthError                   a JWT or per-call token was refused
    │   └── KeysUnavailable         no signing keys could be fetched: cannot check now (503/1011)
    └── StateUnavailable            the shared state (Redis, ``REDIS_URL``) cannot be reached now
"""

from __future__ import annotations

__all__ = [
    "AcsRestError",
    "AcsTrioError",
    "AuthError",
    "ConfigError",
    "KeysUnavailable",
    "MediaClosed",
    "ModelClosed",
    "ModelConnectError",
    "ModelError",
    "ModelRejected",
    "ModelSessionFailed",
    "ProtocolError",
    "StateUnavailable",
]


class AcsTrioError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(AcsTrioError):
    """A setting is missing or invalid; the message names the environment variable."""


class ProtocolError(AcsTrioError):
    """A message that cannot be decoded under its documented wire format."""


class MediaClosed(AcsTrioError):
    """The ACS media WebSocket is closed; ``code`` is the close code when known."""

    def __init__(self, message: str = "media socket closed", *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class ModelError(AcsTrioError):
    """Anything that goes wrong with the realtime model link."""


class ModelConnectError(ModelError):
    """The model's WebSocket could not be opened (network, TLS or timeout).

    ``cause`` is a short, bounded label for metrics: ``dns``, ``refused``, ``tls``, ``timeout``
    or ``network``.
    """

    def __init__(self, message: str, *, cause: str = "network") -> None:
        super().__init__(message)
        self.cause = cause


class ModelRejected(ModelError):
    """The model refused the WebSocket handshake with an HTTP status."""

    def __init__(
        self, message: str, *, status_code: int, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        #: The response's ``Retry-After`` in seconds, when it had a parseable one.
        self.retry_after_s = retry_after_s


class ModelClosed(ModelError):
    """The model's WebSocket closed while the call was running."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class ModelSessionFailed(ModelError):
    """An open model session cannot be used: ``session.update`` rejected or unconfirmed, a
    dead link (no pong), or a retryable ``error`` event.  ``retryable`` says whether a fresh
    session may fix it."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class AcsRestError(AcsTrioError):
    """A Call Automation REST request failed; ``status_code`` is None for network errors."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class AuthError(AcsTrioError):
    """A bearer JWT or a per-call token did not verify."""


class KeysUnavailable(AuthError):
    """No JWKS could be fetched, so no token can be checked now (not the caller's fault)."""


class StateUnavailable(AcsTrioError):
    """The shared call state (Redis) did not answer: new calls are refused until it is back."""
