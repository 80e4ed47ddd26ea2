"""The simulator's messages match docs/protocols/acs.md, and it reads the server's replies leniently."""

from __future__ import annotations

import base64
import datetime as dt
import json

import numpy as np

from acs_trio.testing.acs.audio import Clip, frame_bytes
from acs_trio.testing.acs.media import prepare_clip
from acs_trio.testing.acs.wire import (
    AudioFrameEncoder,
    WallClock,
    audio_metadata,
    cloud_event,
    incoming_call_event,
    parse_outbound,
)

WALL0 = dt.datetime(2024, 11, 15, 19, 16, 12, 925000, tzinfo=dt.UTC)


def test_audio_metadata_is_the_documented_shape_at_24k() -> None:
    message = audio_metadata(subscription_id="sub-1", sample_rate=24000)
    assert json.loads(message) == {
        "kind": "AudioMetadata",
        "audioMetadata": {
            "subscriptionId": "sub-1",
            "encoding": "PCM",
            "sampleRate": 24000,
            "channels": 1,
            "length": 960,
        },
    }
    assert (
        json.loads(audio_metadata(subscription_id="s", sample_rate=16000))["audioMetadata"][
            "length"
        ]
        == 640
    )


def test_audio_data_frame_is_the_documented_shape_with_960_bytes() -> None:
    clock = WallClock(100.0, WALL0)
    encoder = AudioFrameEncoder("4:+14255550000")
    pcm = np.arange(480, dtype=np.int16).tobytes()
    message = encoder.message(clock.audio(100.0), encoder.tail(pcm, silent=False))
    decoded = json.loads(message)
    assert decoded == {
        "kind": "AudioData",
        "audioData": {
            "timestamp": "2024-11-15T19:16:12.925Z",
            "participantRawID": "4:+14255550000",
            "data": base64.b64encode(pcm).decode(),
            "silent": False,
        },
    }
    assert list(decoded["audioData"]) == ["timestamp", "participantRawID", "data", "silent"]
    assert len(base64.b64decode(decoded["audioData"]["data"])) == frame_bytes(24000) == 960


def test_quiet_frames_go_out_silent_and_zeroed() -> None:
    samples = np.concatenate([np.full(480, 3000), np.full(480, 20)]).astype(np.int16)
    prepared = prepare_clip(Clip(24000, samples), AudioFrameEncoder("4:+1"), threshold_rms=100)
    loud, quiet = (json.loads("{" + t[2:-1])["data"] for t in prepared.tails)
    assert prepared.silent == [False, True]
    assert base64.b64decode(quiet) == bytes(960)
    assert base64.b64decode(loud) == samples[:480].tobytes()
    assert prepared.last_voiced == 0


def test_wall_clock_follows_trio_time() -> None:
    clock = WallClock(10.0, WALL0)
    assert clock.audio(10.02) == "2024-11-15T19:16:12.945Z"
    assert clock.event_grid(11.0) == "2024-11-15T19:16:13.925000Z"
    assert clock.cloud_event(10.0) == "2024-11-15T19:16:12.925000+00:00"


def test_incoming_call_event_is_an_event_grid_array_with_phone_numbers() -> None:
    [event] = incoming_call_event(
        event_id="e1", topic="/subscriptions/x", caller="+14255550001", recipient="+18005550100",
        incoming_call_context="ctx", server_call_id="srv", correlation_id="corr",
        event_time="2023-04-04T17:18:42.554221Z",
    )  # fmt: skip
    assert set(event) == {
        "id", "topic", "subject", "data", "eventType", "dataVersion", "metadataVersion", "eventTime"
    }  # fmt: skip
    assert event["eventType"] == "Microsoft.Communication.IncomingCall"
    data = event["data"]
    assert data["from"] == {
        "kind": "phoneNumber",
        "rawId": "4:+14255550001",
        "phoneNumber": {"value": "+14255550001"},
    }
    assert data["to"]["rawId"] == "4:+18005550100"
    assert data["incomingCallContext"] == "ctx"
    assert (data["serverCallId"], data["correlationId"]) == ("srv", "corr")


def test_cloud_event_envelope_follows_section_3() -> None:
    event = cloud_event(
        "CallConnected", event_id="i", call_connection_id="c1", server_call_id="s",
        correlation_id="k", time="t", operation_context="op",
    )  # fmt: skip
    assert event["type"] == "Microsoft.Communication.CallConnected"
    assert event["source"] == event["subject"] == "calling/callConnections/c1/CallConnected"
    assert event["specversion"] == "1.0"
    assert event["data"] == {
        "type": "callConnected",
        "callConnectionId": "c1",
        "serverCallId": "s",
        "correlationId": "k",
        "operationContext": "op",
    }


def test_outbound_documented_shapes_are_recognised() -> None:
    pcm = bytes(range(10))
    audio = json.dumps(
        {
            "Kind": "AudioData",
            "AudioData": {"Data": base64.b64encode(pcm).decode()},
            "StopAudio": None,
        }
    )
    stop = json.dumps({"Kind": "StopAudio", "AudioData": None, "StopAudio": {}})
    parsed = parse_outbound(audio)
    assert (parsed.kind, parsed.shape, parsed.pcm, parsed.problem) == (
        "AudioData",
        "documented",
        pcm,
        None,
    )
    assert (parse_outbound(stop).kind, parse_outbound(stop).shape) == ("StopAudio", "documented")


def test_outbound_camel_case_is_accepted_but_counted() -> None:
    audio = parse_outbound('{"kind": "AudioData", "audioData": {"data": "AAA="}}')
    stop = parse_outbound('{"kind": "StopAudio", "stopAudio": {}}')
    assert (audio.kind, audio.shape, audio.pcm) == ("AudioData", "camelCase", b"\x00\x00")
    assert (stop.kind, stop.shape) == ("StopAudio", "camelCase")


def test_outbound_garbage_is_flagged() -> None:
    assert parse_outbound(b"\x00").problem is not None
    assert parse_outbound("not json").problem == "not JSON"
    assert parse_outbound('{"Kind": "Mark"}').kind == "unknown"
    bad = parse_outbound('{"Kind": "AudioData", "AudioData": {"Data": "@@@"}, "StopAudio": null}')
    assert bad.problem == "Data is not valid base64"
    odd = parse_outbound('{"Kind": "AudioData", "AudioData": {"Data": "AAAA"}, "StopAudio": null}')
    assert odd.problem == "odd number of PCM16 bytes"
