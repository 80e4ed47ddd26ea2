"""The IncomingCall webhook's shared secret (``INCOMING_CALL_SECRET``).

Event Grid cannot sign its deliveries to a plain webhook, so the subscription carries a secret
that only it and this server know, in one of two places (docs/deployment.md has the settings):

* the endpoint URL's query: ``https://<host>/api/incomingCall?code=<secret>``;
* a delivery property (custom header) ``X-Incoming-Call-Secret: <secret>``, marked secret.

:func:`incoming_call_authorized` runs before the request body is read, so a request without the
secret costs a header lookup and a constant-time compare, whatever its size; the subscription
handshakes (the Event Grid validation event, the CloudEvents ``OPTIONS``) need it as well, so
nobody can point their own subscription at this endpoint.
"""

from __future__ import annotations

import hmac
from typing import Protocol

__all__ = ["SECRET_HEADER", "SECRET_QUERY", "incoming_call_authorized"]


class _Lookup(Protocol):
    """Quart's ``Headers`` and ``MultiDict`` (request.args) both have ``get``."""

    def get(self, key: str) -> str | None: ...


SECRET_HEADER = "X-Incoming-Call-Secret"
SECRET_QUERY = "code"


def incoming_call_authorized(secret: str, headers: _Lookup, query: _Lookup) -> bool:
    """True if the request carries ``secret`` in the header or the ``code`` query parameter.

    Compared with :func:`hmac.compare_digest` (as bytes, so non-ASCII input is no error); an empty
    configured secret authorizes nothing.
    """
    if not secret:
        return False
    expected = secret.encode()
    for offered in (headers.get(SECRET_HEADER), query.get(SECRET_QUERY)):
        if offered is not None and hmac.compare_digest(offered.encode(), expected):
            return True
    return False
