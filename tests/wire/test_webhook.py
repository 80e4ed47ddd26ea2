"""Decoding webhook bodies: one item per event, never an exception for one bad event."""

from __future__ import annotations

import pytest

from acs_trio.wire.webhook import (
    BadBody,
    CallbackEvent,
    IncomingCall,
    Skipped,
    ValidationRequest,
    decode_callbacks,
    decode_event_grid,
    load_json_array,
)
from tests.acs_service import callback_event, incoming_call_event


def test_event_grid_batch_decodes_each_event() -> None:
    validation = {
        "id": "v",
        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "data": {"validationCode": "code-1"},
    }
    decoded = decode_event_grid(
        [validation, incoming_call_event("e-1", "ctx-1", "corr-1"), {"eventType": "X", "data": {}}]
    )
    assert decoded[0] == ValidationRequest("v", "code-1")
    assert decoded[1] == IncomingCall(
        event_id="e-1",
        incoming_call_context="ctx-1",
        correlation_id="corr-1",
        server_call_id="server-call-e-1",
        caller="+14255550123",
    )
    assert isinstance(decoded[2], Skipped)


def test_cloudevents_schema_uses_type_instead_of_event_type() -> None:
    event = incoming_call_event("e-1", "ctx-1")
    cloud = {"id": "e-1", "type": event["eventType"], "data": event["data"], "specversion": "1.0"}
    [decoded] = decode_event_grid([cloud])
    assert isinstance(decoded, IncomingCall)


def test_non_pstn_caller_is_its_raw_id() -> None:
    event = incoming_call_event("e-1", "ctx-1")
    event["data"]["from"] = {"kind": "communicationUser", "rawId": "8:acs:abc"}
    [decoded] = decode_event_grid([event])
    assert isinstance(decoded, IncomingCall)
    assert decoded.caller == "8:acs:abc"


@pytest.mark.parametrize(
    "event",
    [
        None,
        "text",
        {"eventType": "Microsoft.Communication.IncomingCall"},
        {"eventType": "Microsoft.Communication.IncomingCall", "data": {"incomingCallContext": 5}},
        {"eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "data": {}},
    ],
)
def test_unusable_events_are_skipped_with_a_reason(event: object) -> None:
    [decoded] = decode_event_grid([event])
    assert isinstance(decoded, Skipped)
    assert decoded.reason


def test_callbacks_decode_with_short_names_and_results() -> None:
    failed = callback_event(
        "MediaStreamingFailed", "conn-1", resultInformation={"code": 400, "subCode": 8581}
    )
    decoded = decode_callbacks(
        [
            failed,
            {"type": "Other.Event", "data": {}},
            {"type": "Microsoft.Communication.CallConnected"},
        ]
    )
    first = decoded[0]
    assert isinstance(first, CallbackEvent)
    assert (first.name, first.call_connection_id) == ("MediaStreamingFailed", "conn-1")
    assert first.result_summary().startswith("400/8581")
    assert all(isinstance(item, Skipped) for item in decoded[1:])


@pytest.mark.parametrize("body", [b"", b"{", b"42", b'"x"', b"\xff"])
def test_bodies_that_are_not_event_arrays_are_refused(body: bytes) -> None:
    with pytest.raises(BadBody):
        load_json_array(body)


def test_a_single_object_is_a_batch_of_one() -> None:
    assert load_json_array(b'{"id": "x"}') == [{"id": "x"}]


def test_deeply_nested_json_is_a_bad_body_not_a_crash() -> None:
    with pytest.raises(BadBody, match="nested"):
        load_json_array(b"[" * 200_000)


def test_an_oversized_incoming_call_context_is_skipped() -> None:
    [decoded] = decode_event_grid([incoming_call_event("e-1", "c" * (16 * 1024 + 1))])
    assert isinstance(decoded, Skipped)
    assert "too long" in decoded.reason
    [ok] = decode_event_grid([incoming_call_event("e-2", "c" * (16 * 1024))])
    assert isinstance(ok, IncomingCall)
