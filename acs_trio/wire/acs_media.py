"""ACS bidirectional media-streaming messages: pure, sync codec.

Sources (docs/protocols/acs.md):

* §4.2, inbound (ACS → us): camelCase keys, PascalCase ``kind`` values, e.g.
  ``{"kind": "AudioData", "audioData": {"timestamp": …, "participantRawID": …, "data": "<b64>",
  "silent": false}}``; ``AudioMetadata`` comes first; ``DtmfData``, ``TranscriptionMetadata`` and
  ``TranscriptionData`` may follow.  Readers of the SDKs (.NET, JS) treat the key case leniently;
  so do we: ``kind``/``Kind`` and ``audioData``/``AudioData`` are both accepted.
* §4.4, outbound (us → ACS): the documented Python shape, PascalCase, chosen here and only here:
  ``{"Kind": "AudioData", "AudioData": {"Data": "<b64>"}, "StopAudio": null}`` and
  ``{"Kind": "StopAudio", "AudioData": null, "StopAudio": {}}``.
* §4.3: 20 ms frames; PCM16 little-endian mono at 16 or 24 kHz (640 / 960 bytes per frame).
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ProtocolError

__all__ = [
    "STOP_AUDIO",
    "SUPPORTED_SAMPLE_RATES",
    "AcsMessage",
    "AudioData",
    "AudioMetadata",
    "DtmfData",
    "TranscriptionData",
    "TranscriptionMetadata",
    "UnknownKind",
    "encode_audio_data",
    "parse_acs_message",
]

SUPPORTED_SAMPLE_RATES = (16000, 24000)


@dataclass(frozen=True, slots=True)
class AudioMetadata:
    subscription_id: str
    encoding: str
    sample_rate: int
    channels: int
    length: int


@dataclass(frozen=True, slots=True)
class AudioData:
    timestamp: str
    participant_raw_id: str | None
    #: Raw PCM16LE; empty when ACS sent a silent frame without data.
    pcm: bytes
    silent: bool


@dataclass(frozen=True, slots=True)
class DtmfData:
    tone: str
    participant_raw_id: str | None


@dataclass(frozen=True, slots=True)
class TranscriptionMetadata:
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TranscriptionData:
    text: str
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UnknownKind:
    kind: str


AcsMessage = (
    AudioMetadata | AudioData | DtmfData | TranscriptionMetadata | TranscriptionData | UnknownKind
)

# Pre-split pieces of the outbound AudioData message: base64 never needs JSON escaping, so the
# hot path is one string concatenation instead of a json.dumps per 20 ms frame.
_AUDIO_DATA_HEAD = '{"Kind": "AudioData", "AudioData": {"Data": "'
_AUDIO_DATA_TAIL = '"}, "StopAudio": null}'

#: The barge-in message: ACS drops whatever outbound audio it has queued (§4.4).
STOP_AUDIO = '{"Kind": "StopAudio", "AudioData": null, "StopAudio": {}}'


def encode_audio_data(pcm: bytes) -> str:
    """One outbound AudioData message carrying ``pcm`` (PCM16LE mono at the call's rate)."""
    return (
        _AUDIO_DATA_HEAD
        + binascii.b2a_base64(pcm, newline=False).decode("ascii")
        + _AUDIO_DATA_TAIL
    )


def parse_acs_message(raw: str | bytes) -> AcsMessage:
    """Decode one media message from ACS.

    Raises:
        ProtocolError: not JSON, not an object, no ``kind``, or a known kind with a bad body.
    """
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"media message is not JSON: {exc!r:.200}") from None
    if not isinstance(message, dict):
        raise ProtocolError("media message is not a JSON object")
    kind = message.get("kind", message.get("Kind"))
    if not isinstance(kind, str) or not kind:
        raise ProtocolError("media message has no 'kind'")
    decoder = _DECODERS.get(kind.lower())
    if decoder is None:
        return UnknownKind(kind)
    body = _body(message, kind)
    try:
        return decoder(body)
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
        raise ProtocolError(f"bad {kind} message: {exc!r}") from None


def _body(message: dict[str, Any], kind: str) -> dict[str, Any]:
    """The object named after the kind, whatever its case (``audioData``, ``AudioData``, …)."""
    camel = kind[0].lower() + kind[1:]
    body = message.get(camel)  # the documented spelling: one lookup on the hot path
    if body is None:
        wanted = kind.lower()
        body = next((v for k, v in message.items() if k.lower() == wanted and k != "kind"), None)
    if not isinstance(body, dict):
        raise ProtocolError(f"{kind} message has no '{camel}' object")
    return body


def _decode_audio_data(body: dict[str, Any]) -> AudioData:
    data = body.get("data")
    silent = bool(body.get("silent", False))
    if data is None or data == "":
        if not silent:
            raise ValueError("audioData.data is missing")
        pcm = b""
    elif isinstance(data, str):
        try:
            pcm = binascii.a2b_base64(data, strict_mode=True)
        except binascii.Error as exc:
            raise ValueError(f"audioData.data is not base64: {exc}") from None
        if len(pcm) % 2:
            raise ValueError("audioData.data is not whole 16-bit samples")
    else:
        raise TypeError("audioData.data is not a string")
    raw_id = body.get("participantRawID")
    return AudioData(
        timestamp=str(body.get("timestamp", "")),
        participant_raw_id=raw_id if isinstance(raw_id, str) else None,
        pcm=pcm,
        silent=silent,
    )


def _decode_metadata(body: dict[str, Any]) -> AudioMetadata:
    return AudioMetadata(
        subscription_id=str(body.get("subscriptionId", "")),
        encoding=str(body.get("encoding", "PCM")),
        sample_rate=int(body["sampleRate"]),
        channels=int(body.get("channels", 1)),
        length=int(body.get("length", 0)),
    )


def _decode_dtmf(body: dict[str, Any]) -> DtmfData:
    raw_id = body.get("participantRawID")
    return DtmfData(
        tone=str(body["data"]), participant_raw_id=raw_id if isinstance(raw_id, str) else None
    )


_DECODERS: dict[str, Callable[[dict[str, Any]], AcsMessage]] = {
    "audiodata": _decode_audio_data,
    "audiometadata": _decode_metadata,
    "dtmfdata": _decode_dtmf,
    "transcriptionmetadata": lambda body: TranscriptionMetadata(fields=body),
    "transcriptiondata": lambda body: TranscriptionData(
        text=str(body.get("text", "")), fields=body
    ),
}
