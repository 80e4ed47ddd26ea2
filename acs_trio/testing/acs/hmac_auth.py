"""Verify the HMAC-SHA256 signature that the Call Automation SDK puts on every REST request.

The scheme is read from the SDK itself (``azure/communication/callautomation/_shared/policy.py``,
``HMACCredentialsPolicy._sign_request``, 1.6.0)::

    x-ms-content-sha256 = base64(sha256(body))
    string_to_sign      = VERB + "\\n" + path_and_query + "\\n"
                          + x-ms-date + ";" + host + ";" + hash
    Authorization       = "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature="
                          + base64(hmac_sha256(base64decode(access_key), string_to_sign))

Checking it proves the server really goes through the SDK with the connection string we gave it.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import hmac
from collections.abc import Mapping

from ...errors import AuthError

__all__ = ["MAX_CLOCK_SKEW_S", "content_hash", "verify_hmac_request"]

#: How far ``x-ms-date`` may be from our clock.  The real limit is undocumented [INF]; stale
#: requests fail with "lifetime validation of the signed http request failed" (§1.3).
MAX_CLOCK_SKEW_S = 15 * 60

_SCHEME = "HMAC-SHA256"


def content_hash(body: bytes) -> str:
    """``x-ms-content-sha256`` for ``body``."""
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def verify_hmac_request(
    *,
    method: str,
    path_and_query: str,
    headers: Mapping[str, str],
    body: bytes,
    access_key: str,
    now: dt.datetime | None = None,
) -> None:
    """Raise :class:`AuthError` unless the request carries a valid SDK HMAC signature.

    ``headers`` must be keyed by lower-case names.  ``now`` defaults to the wall clock, because
    ``x-ms-date`` is a real timestamp on the wire.
    """
    authorization = headers.get("authorization", "")
    scheme, _, params = authorization.partition(" ")
    if scheme != _SCHEME:
        raise AuthError("Authorization is not an HMAC-SHA256 signature")
    fields = dict(part.partition("=")[::2] for part in params.split("&"))
    signed_names = fields.get("SignedHeaders", "").split(";")
    signature = fields.get("Signature", "")
    if signed_names != ["x-ms-date", "host", "x-ms-content-sha256"] or not signature:
        raise AuthError(f"unexpected SignedHeaders {fields.get('SignedHeaders')!r}")

    claimed_hash = headers.get("x-ms-content-sha256", "")
    if not hmac.compare_digest(claimed_hash, content_hash(body)):
        raise AuthError("x-ms-content-sha256 does not match the body")

    date = headers.get("x-ms-date", "")
    try:
        sent_at = email.utils.parsedate_to_datetime(date)
    except (TypeError, ValueError) as exc:
        raise AuthError(f"bad x-ms-date {date!r}") from exc
    current = now if now is not None else dt.datetime.now(dt.UTC)
    if sent_at.tzinfo is None or abs((current - sent_at).total_seconds()) > MAX_CLOCK_SKEW_S:
        raise AuthError("lifetime validation of the signed http request failed (x-ms-date)")

    values = {
        "x-ms-date": date,
        "host": headers.get("host", ""),
        "x-ms-content-sha256": claimed_hash,
    }
    string_to_sign = f"{method.upper()}\n{path_and_query}\n" + ";".join(
        values[name] for name in signed_names
    )
    try:
        secret = base64.b64decode(access_key, validate=True)
    except ValueError as exc:
        raise AuthError("access key is not base64") from exc
    expected = base64.b64encode(
        hmac.new(secret, string_to_sign.encode("utf-8"), hashlib.sha256).digest()
    ).decode("ascii")
    if not hmac.compare_digest(signature, expected):
        raise AuthError("HMAC signature does not verify")
