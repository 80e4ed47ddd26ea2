"""The Realtime codec: GA client events out, GA and beta server events in (docs/protocols/realtime.md)."""

from __future__ import annotations

import base64
import json

import pytest

from acs_trio.config import AgentSettings
from acs_trio.errors import ProtocolError
from acs_trio.wire import realtime as rt


def test_session_update_is_ga_shaped() -> None:
    agent = AgentSettings(instructions="Be brief.", voice="cedar", vad_silence_duration_ms=400)
    event = json.loads(rt.session_update(agent))
    session = event["session"]
    assert event["type"] == "session.update"
    assert session["type"] == "realtime"
    assert session["output_modalities"] == ["audio"]
    assert session["instructions"] == "Be brief."
    assert session["audio"]["output"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "voice": "cedar",
    }
    vad = session["audio"]["input"]["turn_detection"]
    assert vad == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 400,
        "create_response": True,
        "interrupt_response": True,
    }
    assert session["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe"}
    assert session["tools"] == []
    assert "temperature" not in session  # GA removed it


def test_client_events() -> None:
    assert json.loads(rt.input_audio_append(b"\x00\x01")) == {
        "type": "input_audio_buffer.append",
        "audio": base64.b64encode(b"\x00\x01").decode(),
    }
    assert json.loads(rt.truncate_item("item_1", 1500)) == {
        "type": "conversation.item.truncate",
        "item_id": "item_1",
        "content_index": 0,
        "audio_end_ms": 1500,
    }
    assert json.loads(rt.response_create()) == {"type": "response.create"}
    # Never per-response instructions: they would replace the persona (the greeting is an item).
    assert json.loads(rt.response_create("e7")) == {"type": "response.create", "event_id": "e7"}
    assert json.loads(rt.truncate_item("item_1", 20, event_id="e8"))["event_id"] == "e8"
    assert json.loads(rt.item_delete("item_2", "e9")) == {
        "type": "conversation.item.delete",
        "event_id": "e9",
        "item_id": "item_2",
    }
    assert json.loads(rt.message_item("assistant", "Hello.", "e10")) == {
        "type": "conversation.item.create",
        "event_id": "e10",
        "item": {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello."}],
        },
    }
    assert json.loads(rt.message_item("user", "Hi"))["item"]["content"] == [
        {"type": "input_text", "text": "Hi"}
    ]
    update = json.loads(rt.session_update(AgentSettings(), "e11"))
    assert (update["type"], update["event_id"]) == ("session.update", "e11")


@pytest.mark.parametrize("name", ["response.output_audio.delta", "response.audio.delta"])
def test_audio_delta_in_ga_and_beta_names(name: str) -> None:
    event = {"type": name, "response_id": "r", "item_id": "i", "content_index": 0, "delta": "AAE="}
    assert rt.parse_server_event(json.dumps(event)) == rt.AudioDelta("r", "i", 0, b"\x00\x01")


def test_server_events() -> None:
    parse = rt.parse_server_event
    assert parse(
        '{"type": "input_audio_buffer.speech_started", "item_id": "u", "audio_start_ms": 5}'
    ) == (rt.SpeechStarted("u", 5))
    assert parse('{"type": "response.created", "response": {"id": "r1"}}') == rt.ResponseCreated(
        "r1"
    )
    done = parse(
        '{"type": "response.done", "response": {"id": "r1", "status": "cancelled",'
        ' "status_details": {"type": "cancelled", "reason": "turn_detected"}}}'
    )
    assert done == rt.ResponseDone("r1", "cancelled", "turn_detected")
    assert not done.failed
    failed = parse(
        '{"type": "response.done", "response": {"id": "r2", "status": "failed", "status_details":'
        ' {"type": "failed", "error": {"type": "server_error", "code": "rate_limit_exceeded",'
        ' "message": "slow down"}}}}'
    )
    assert failed == rt.ResponseDone(
        "r2", "failed", None, "server_error/rate_limit_exceeded: slow down"
    )
    assert failed.failed
    assert parse(
        '{"type": "response.output_item.added", "response_id": "r", "output_index": 0,'
        ' "item": {"id": "i", "type": "message", "role": "assistant"}}'
    ) == rt.OutputItemAdded("r", "i", "message")
    assert parse(
        '{"type": "response.output_audio_transcript.delta", "item_id": "i", "delta": "He"}'
    ) == rt.OutputTranscriptDelta("i", "He")
    created = parse('{"type": "session.created", "session": {"expires_at": 1800000000}}')
    assert isinstance(created, rt.SessionEvent) and created.expires_at == 1_800_000_000
    error = parse(
        '{"type": "error", "error": {"type": "invalid_request_error", "code": "session_expired",'
        ' "message": "m", "param": null, "event_id": "e1"}}'
    )
    assert isinstance(error, rt.ErrorEvent) and error.fatal and error.event_id == "e1"
    assert parse('{"type": "rate_limits.updated"}') == rt.OtherEvent("rate_limits.updated")


@pytest.mark.parametrize(
    "raw",
    [
        "{",
        "[]",
        '{"type": 1}',
        '{"type": "response.output_audio.delta", "response_id": "r", "item_id": "i", "delta": "@@"}',
        '{"type": "response.output_audio.delta", "response_id": "r", "item_id": "i", "delta": "AA=="}',
        '{"type": "response.created"}',
    ],
)
def test_bad_server_events_raise_protocol_error(raw: str) -> None:
    with pytest.raises(ProtocolError):
        rt.parse_server_event(raw)


@pytest.mark.parametrize(
    "raw",
    [
        '{"type": "response.done", "response": "x"}',
        '{"type": "input_audio_buffer.speech_started", "audio_start_ms": Infinity}',
        "[" * 100_000,
    ],
)
def test_hostile_server_events_are_protocol_errors(raw: str) -> None:
    with pytest.raises(ProtocolError):
        rt.parse_server_event(raw)


def test_function_calls_and_their_answers() -> None:
    done = rt.parse_server_event(
        json.dumps(
            {
                "type": "response.function_call_arguments.done",
                "event_id": "e1",
                "response_id": "resp_1",
                "item_id": "item_1",
                "output_index": 0,
                "call_id": "call_1",
                "name": "lookup_order",
                "arguments": '{"order_id": "A1"}',
            }
        )
    )
    item = rt.parse_server_event(
        json.dumps(
            {
                "type": "response.output_item.done",
                "response_id": "resp_1",
                "output_index": 0,
                "item": {"id": "item_1", "type": "function_call", "call_id": "call_1",
                         "name": "lookup_order", "arguments": '{"order_id": "A1"}'},
            }
        )
    )  # fmt: skip
    expected = rt.FunctionCall("resp_1", "item_1", "call_1", "lookup_order", '{"order_id": "A1"}')
    assert done == item == expected
    message_item = {"type": "response.output_item.done", "item": {"type": "message"}}
    assert rt.parse_server_event(json.dumps(message_item)) == rt.OtherEvent(
        "response.output_item.done"
    )
    with pytest.raises(ProtocolError):
        rt.parse_server_event(
            json.dumps({"type": "response.function_call_arguments.done", "call_id": 1})
        )
    # docs/protocols/realtime.md §2.4: the answer is a conversation item; §2.5 response.cancel.
    assert json.loads(rt.function_call_output("call_1", '{"ok": true}')) == {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": "call_1", "output": '{"ok": true}'},
    }
    assert rt.parse_function_call_output(rt.function_call_output("call_1", "{}")) == (
        "call_1",
        "{}",
    )
    assert rt.parse_function_call_output(rt.message_item("user", "function_call_output")) is None
    # A call replayed into a new session, so that session accepts its output.
    assert json.loads(rt.function_call_item("call_1", "f", '{"a": 1}', "ev_2")) == {
        "event_id": "ev_2",
        "type": "conversation.item.create",
        "item": {
            "type": "function_call",
            "call_id": "call_1",
            "name": "f",
            "arguments": '{"a": 1}',
        },
    }
    assert json.loads(rt.response_cancel("ev_1")) == {"event_id": "ev_1", "type": "response.cancel"}
