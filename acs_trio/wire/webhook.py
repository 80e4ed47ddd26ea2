"""Decoding the two webhook bodies: Event Grid deliveries and Call Automation callbacks.

Pure and synchronous, so every bad-input case is a table test.  Nothing here raises on a single
bad event: a batch decodes to one item per event, and an event we cannot use becomes
:class:`Skipped` with a reason, because Event Grid retries a whole delivery on any non-2xx and a
permanently bad event must not be retried forever (docs/control-plane.md, "Bad input").

Sources of the shapes:
* Event Grid schema: ``eventType``/``data``/``id`` (docs/protocols/acs.md §1.1); CloudEvents 1.0
  schema: ``type``/``data``/``id``/``source``/``specversion`` (same section).
* Validation: ``Microsoft.EventGrid.SubscriptionValidationEvent`` with ``data.validationCode``
  (§1.2).  IncomingCall: ``data.incomingCallContext``, ``correlationId``, ``serverCallId``,
  ``from`` (§1.3).  Callbacks: CloudEvents array, ``type`` = ``Microsoft.Communication.<Name>``,
  ``data.callConnectionId``/``correlationId``/``resultInformation`` (§3).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "CallbackEvent",
    "IncomingCall",
    "Skipped",
    "ValidationRequest",
    "caller_id",
    "decode_callbacks",
    "decode_event_grid",
    "load_json_array",
]

VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"
INCOMING_CALL_EVENT = "Microsoft.Communication.IncomingCall"
CALLBACK_PREFIX = "Microsoft.Communication."
#: An ``incomingCallContext`` is an opaque signed token of a few KiB [INF]; anything far larger is
#: junk (the route is unauthenticated, docs/protocols/acs.md §5.3) and is skipped, not answered.
MAX_CONTEXT_CHARS = 16 * 1024


class BadBody(ValueError):
    """The body as a whole is not what the route accepts (answered with HTTP 400)."""


@dataclass(frozen=True)
class ValidationRequest:
    event_id: str
    validation_code: str


@dataclass(frozen=True)
class IncomingCall:
    event_id: str
    incoming_call_context: str
    correlation_id: str
    server_call_id: str
    caller: str


@dataclass(frozen=True)
class Skipped:
    """An event we will not act on; ``reason`` goes into one log line."""

    event_id: str
    event_type: str
    reason: str


@dataclass(frozen=True)
class CallbackEvent:
    event_id: str
    #: Short name: ``CallConnected``, ``CallDisconnected``, ``MediaStreamingFailed``...
    name: str
    call_connection_id: str
    correlation_id: str
    data: dict[str, Any] = field(repr=False)

    def result_summary(self) -> str:
        """``code/subCode message`` from ``resultInformation`` for log lines (§3)."""
        info = self.data.get("resultInformation")
        if not isinstance(info, dict):
            return "-"
        return f"{info.get('code')}/{info.get('subCode')} {info.get('message', '')!r}"


def load_json_array(body: bytes) -> list[Any]:
    """Both webhooks deliver a JSON array; a single object is accepted as a batch of one."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadBody(f"body is not JSON: {exc}") from None
    except RecursionError:
        # e.g. "[" * 200000: well under the 1 MiB limit, but too deep for json.loads.
        raise BadBody("body is not JSON we accept: nested too deeply") from None
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        raise BadBody("body is not a JSON array of events")
    return value


_T = TypeVar("_T")


def _event_type(event: dict[str, Any]) -> str:
    # Event Grid schema says eventType, CloudEvents says type.
    value = event.get("eventType", event.get("type"))
    return value if isinstance(value, str) else ""


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def caller_id(data: dict[str, Any]) -> str:
    """Phone number if PSTN, else the raw id — the samples' rule (docs/protocols/acs.md §1.3)."""
    source = data.get("from")
    if not isinstance(source, dict):
        return "-"
    phone = source.get("phoneNumber")
    if source.get("kind") == "phoneNumber" and isinstance(phone, dict):
        return str(phone.get("value", "-"))
    return str(source.get("rawId", "-"))


def _decode_each(
    events: list[Any], decode_one: Callable[[str, str, dict[str, Any] | None], _T]
) -> list[_T | Skipped]:
    """One item per event: ``decode_one(id, type, data)``, or Skipped if it is not an object."""
    decoded: list[_T | Skipped] = []
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            decoded.append(Skipped(f"#{index}", "-", "event is not a JSON object"))
            continue
        data = event.get("data")
        event_id = _str(event, "id") or f"#{index}"
        decoded.append(
            decode_one(event_id, _event_type(event), data if isinstance(data, dict) else None)
        )
    return decoded


def decode_event_grid(events: list[Any]) -> list[ValidationRequest | IncomingCall | Skipped]:
    """One item per event of an Event Grid (or CloudEvents) delivery to ``/api/incomingCall``."""
    return _decode_each(events, _event_grid_event)


def _event_grid_event(
    event_id: str, kind: str, data: dict[str, Any] | None
) -> ValidationRequest | IncomingCall | Skipped:
    if data is None:
        return Skipped(event_id, kind or "-", "event has no data object")
    if kind == VALIDATION_EVENT:
        code = _str(data, "validationCode")
        if code:
            return ValidationRequest(event_id, code)
        return Skipped(event_id, kind, "validation event without validationCode")
    if kind != INCOMING_CALL_EVENT:
        return Skipped(event_id, kind or "-", "event type not handled here")
    context = _str(data, "incomingCallContext")
    if not context:
        return Skipped(event_id, kind, "IncomingCall without incomingCallContext")
    if len(context) > MAX_CONTEXT_CHARS:
        return Skipped(event_id, kind, f"incomingCallContext too long ({len(context)} chars)")
    return IncomingCall(
        event_id=event_id,
        incoming_call_context=context,
        correlation_id=_str(data, "correlationId"),
        server_call_id=_str(data, "serverCallId"),
        caller=caller_id(data),
    )


def decode_callbacks(events: list[Any]) -> list[CallbackEvent | Skipped]:
    """One item per CloudEvent POSTed by Call Automation to a call's callback URL (§3)."""
    return _decode_each(events, _callback_event)


def _callback_event(
    event_id: str, kind: str, data: dict[str, Any] | None
) -> CallbackEvent | Skipped:
    if not kind.startswith(CALLBACK_PREFIX):
        return Skipped(event_id, kind or "-", "not a Call Automation event")
    if data is None or not _str(data, "callConnectionId"):
        return Skipped(event_id, kind, "event without data.callConnectionId")
    return CallbackEvent(
        event_id=event_id,
        name=kind.removeprefix(CALLBACK_PREFIX),
        call_connection_id=_str(data, "callConnectionId"),
        correlation_id=_str(data, "correlationId"),
        data=data,
    )
