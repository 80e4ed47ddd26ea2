"""Shared state between the fake REST endpoint and the call scripts.

A call script registers the ``incomingCallContext`` it is about to deliver; the REST endpoint
finds it when the server answers, and later finds the call connection when the server hangs up.
Everything here runs on the one Trio thread, so plain dicts and ``trio.Event`` suffice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import trio

from .wire import phone_identifier

__all__ = ["AnswerRequest", "CallRegistry", "SimCall"]


@dataclass(frozen=True)
class AnswerRequest:
    """What the server asked for in ``answer_call`` (docs/protocols/acs.md §2.2, §2.3)."""

    callback_uri: str
    transport_url: str
    audio_format: str
    audio_channel_type: str
    operation_context: str | None
    received_at: float

    @property
    def sample_rate(self) -> int:
        # docs/protocols/acs.md §2.3: the default when audioFormat is omitted is PCM 16K mono.
        return 24000 if self.audio_format == "pcm24KMono" else 16000


@dataclass
class SimCall:
    """One simulated PSTN call as the fake ACS service sees it."""

    incoming_call_context: str
    caller: str
    recipient: str
    server_call_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    correlation_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    call_connection_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    subscription_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    state: str = "none"
    answer: AnswerRequest | None = None
    answered: trio.Event = field(default_factory=trio.Event)
    #: Set when the server hangs up through REST; ``hang_up_via`` says which endpoint.
    hung_up: trio.Event = field(default_factory=trio.Event)
    hang_up_via: str | None = None
    hang_up_at: float | None = None
    #: REST requests for this call that were refused, with the reason.
    rest_problems: list[str] = field(default_factory=list)
    #: Set when the server rejects the ringing call (``:reject``); ``reject_reason`` says how.
    rejected: trio.Event = field(default_factory=trio.Event)
    reject_reason: str | None = None

    def properties(self) -> dict[str, Any]:
        """``CallConnectionProperties`` in the generated model's wire shape (§2.2)."""
        caller = phone_identifier(self.caller)
        body: dict[str, Any] = {
            "callConnectionId": self.call_connection_id,
            "serverCallId": self.server_call_id,
            "targets": [caller],
            "callConnectionState": self.state,
            "sourceCallerIdNumber": {"value": self.caller},
            "sourceDisplayName": "",
            "source": caller,
            "correlationId": self.correlation_id,
            "answeredFor": {"value": self.recipient},
            "mediaStreamingSubscription": {
                "id": self.subscription_id,
                "state": "active" if self.state == "connected" else "inactive",
                "subscribedContentTypes": ["audio"],
            },
        }
        if self.answer is not None:
            body["callbackUri"] = self.answer.callback_uri
        return body


class CallRegistry:
    """Calls by incoming-call context (before answer) and by call connection id (after)."""

    def __init__(self) -> None:
        self._by_context: dict[str, SimCall] = {}
        self._by_connection: dict[str, SimCall] = {}
        #: Refused REST requests that could not be tied to a call.
        self.unmatched_problems: list[str] = []

    def add(self, call: SimCall) -> None:
        self._by_context[call.incoming_call_context] = call
        self._by_connection[call.call_connection_id] = call

    def remove(self, call: SimCall) -> None:
        self._by_context.pop(call.incoming_call_context, None)
        self._by_connection.pop(call.call_connection_id, None)

    def by_context(self, context: str) -> SimCall | None:
        return self._by_context.get(context)

    def by_connection(self, call_connection_id: str) -> SimCall | None:
        return self._by_connection.get(call_connection_id)
