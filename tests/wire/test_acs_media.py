"""The ACS media codec against the documented shapes (docs/protocols/acs.md §4.2, §4.4)."""

from __future__ import annotations

import base64
import json

import pytest

from acs_trio.errors import ProtocolError
from acs_trio.wire.acs_media import (
    STOP_AUDIO,
    AudioData,
    AudioMetadata,
    DtmfData,
    TranscriptionData,
    UnknownKind,
    encode_audio_data,
    parse_acs_message,
)


def test_documented_inbound_messages_decode() -> None:
    metadata = parse_acs_message(
        '{"kind": "AudioMetadata", "audioMetadata": {"subscriptionId": "89e8cb59", "encoding": "PCM",'
        ' "sampleRate": 16000, "channels": 1, "length": 640}}'
    )
    assert metadata == AudioMetadata("89e8cb59", "PCM", 16000, 1, 640)
    pcm = bytes(range(256)) * 2
    audio = parse_acs_message(
        json.dumps(
            {
                "kind": "AudioData",
                "audioData": {
                    "timestamp": "2024-11-15T19:16:12.925Z",
                    "participantRawID": "8:acs:3d20e1de",
                    "data": base64.b64encode(pcm).decode(),
                    "silent": False,
                },
            }
        )
    )
    assert audio == AudioData("2024-11-15T19:16:12.925Z", "8:acs:3d20e1de", pcm, False)
    assert parse_acs_message('{"kind": "DtmfData", "dtmfData": {"data": "3"}}') == DtmfData(
        "3", None
    )
    transcript = parse_acs_message(
        '{"kind": "TranscriptionData", "transcriptionData": {"text": "hi"}}'
    )
    assert isinstance(transcript, TranscriptionData) and transcript.text == "hi"


def test_key_case_is_lenient_and_silent_frames_may_omit_data() -> None:
    audio = parse_acs_message('{"Kind": "AudioData", "AudioData": {"silent": true}}')
    assert audio == AudioData("", None, b"", True)


def test_unknown_kinds_are_reported_not_rejected() -> None:
    assert parse_acs_message('{"kind": "MarkData", "markData": {}}') == UnknownKind("MarkData")


@pytest.mark.parametrize(
    "raw",
    [
        "nope",
        b"\xff\xfe",
        "[]",
        '{"kind": 5}',
        '{"kind": "AudioData"}',
        '{"kind": "AudioData", "audioData": {"data": "!!"}}',
        '{"kind": "AudioData", "audioData": {"data": 7}}',
        '{"kind": "AudioData", "audioData": {"silent": false}}',
        '{"kind": "AudioMetadata", "audioMetadata": {"sampleRate": "x"}}',
    ],
)
def test_bad_messages_raise_protocol_error(raw: str | bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_acs_message(raw)


def test_outbound_messages_have_the_documented_python_shape() -> None:
    pcm = b"\x01\x02" * 480
    assert json.loads(encode_audio_data(pcm)) == {
        "Kind": "AudioData",
        "AudioData": {"Data": base64.b64encode(pcm).decode()},
        "StopAudio": None,
    }
    assert json.loads(STOP_AUDIO) == {"Kind": "StopAudio", "AudioData": None, "StopAudio": {}}


def test_body_key_case_follows_the_kind_case_insensitively() -> None:
    audio = parse_acs_message(
        '{"kind": "AUDIODATA", "AudioData": {"data": "AAA=", "silent": false}}'
    )
    assert audio == AudioData("", None, b"\x00\x00", False)


@pytest.mark.parametrize(
    "raw",
    [
        '{"kind": "AudioMetadata", "audioMetadata": {"sampleRate": Infinity}}',
        '{"kind": "AudioMetadata", "audioMetadata": {"sampleRate": 1e400}}',
        "[" * 100_000,
    ],
)
def test_hostile_json_is_a_protocol_error_not_a_crash(raw: str) -> None:
    with pytest.raises(ProtocolError):
        parse_acs_message(raw)
