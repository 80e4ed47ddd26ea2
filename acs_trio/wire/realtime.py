"""Realtime API client and server events: pure, sync codec for the GA protocol.

Sources (../shared/docs/realtime-protocol.md): client events §2 (GA ``session.update`` shape §2.1,
``input_audio_buffer.append`` §2.3, ``conversation.item.truncate`` §2.4, ``response.create`` §2.5);
server events §3.2 with the beta → GA renames of §3.1.  Beta names are accepted on input
(``response.audio.delta`` as well as ``response.output_audio.delta``, and so on) so a bridge keeps
working against a peer that still speaks them; everything we *send* is GA.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import AgentSettings
from ..errors import ProtocolError

__all__ = [
    "FATAL_ERROR_CODES",
    "AudioDelta",
    "AudioDone",
    "ErrorEvent",
    "InputTranscript",
    "ItemTruncated",
    "OtherEvent",
    "OutputTranscript",
    "ResponseCreated",
    "ResponseDone",
    "ServerEvent",
    "SessionEvent",
    "SpeechStarted",
    "SpeechStopped",
    "input_audio_append",
    "parse_server_event",
    "response_create",
    "session_update",
    "truncate_item",
]

#: PCM16 at 24 kHz mono: the only PCM rate GA accepts (§4).
MODEL_SAMPLE_RATE = 24000
_PCM_FORMAT = {"type": "audio/pcm", "rate": MODEL_SAMPLE_RATE}

#: ``error`` codes after which the session cannot go on (§6: "session_expired" ends the session).
FATAL_ERROR_CODES = frozenset({"session_expired", "invalid_api_key", "insufficient_quota"})


# --- client events ------------------------------------------------------------------------


def session_update(agent: AgentSettings) -> str:
    """The GA ``session.update`` for a phone call: PCM 24 kHz both ways, server VAD (§2.1)."""
    audio_input: dict[str, Any] = {
        "format": _PCM_FORMAT,
        "turn_detection": {
            "type": "server_vad",
            "threshold": agent.vad_threshold,
            "prefix_padding_ms": agent.vad_prefix_padding_ms,
            "silence_duration_ms": agent.vad_silence_duration_ms,
            "create_response": True,
            "interrupt_response": True,
        },
    }
    if agent.transcription_model:
        audio_input["transcription"] = {"model": agent.transcription_model}
    session = {
        "type": "realtime",
        "model": agent.model,
        "output_modalities": ["audio"],
        "instructions": agent.instructions,
        "audio": {
            "input": audio_input,
            "output": {"format": _PCM_FORMAT, "voice": agent.voice},
        },
        "tools": [],
        "tool_choice": "auto",
    }
    return json.dumps({"type": "session.update", "session": session})


def response_create(instructions: str | None = None) -> str:
    """``response.create``, optionally with per-response instructions (the greeting)."""
    if instructions is None:
        return '{"type": "response.create"}'
    return json.dumps({"type": "response.create", "response": {"instructions": instructions}})


def conversation_item(role: str, text: str) -> str:
    """``conversation.item.create`` with a text message: replays a turn into a new session.

    GA content types: ``input_text`` for the user, ``output_text`` for the assistant (§3).
    """
    kind = "input_text" if role == "user" else "output_text"
    item = {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}
    return json.dumps({"type": "conversation.item.create", "item": item})


def input_audio_append(pcm: bytes) -> str:
    """``input_audio_buffer.append`` with PCM16 24 kHz; built by concatenation (hot path)."""
    return (
        '{"type": "input_audio_buffer.append", "audio": "'
        + binascii.b2a_base64(pcm, newline=False).decode("ascii")
        + '"}'
    )


def truncate_item(item_id: str, audio_end_ms: int, content_index: int = 0) -> str:
    """``conversation.item.truncate``: the caller heard only ``audio_end_ms`` of this item."""
    return json.dumps(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": content_index,
            "audio_end_ms": audio_end_ms,
        }
    )


# --- server events ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionEvent:
    type: str  # session.created | session.updated
    session: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    item_id: str
    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    response_id: str


@dataclass(frozen=True, slots=True)
class AudioDelta:
    response_id: str
    item_id: str
    content_index: int
    pcm: bytes  # PCM16 24 kHz


@dataclass(frozen=True, slots=True)
class AudioDone:
    response_id: str
    item_id: str


@dataclass(frozen=True, slots=True)
class ResponseDone:
    response_id: str
    status: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class OutputTranscript:
    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class InputTranscript:
    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class ItemTruncated:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    type: str
    code: str | None
    message: str
    param: str | None
    event_id: str | None

    @property
    def fatal(self) -> bool:
        return self.code in FATAL_ERROR_CODES


@dataclass(frozen=True, slots=True)
class OtherEvent:
    """Any event the bridge does not act on (content parts, rate limits, …)."""

    type: str


ServerEvent = (
    SessionEvent
    | SpeechStarted
    | SpeechStopped
    | ResponseCreated
    | AudioDelta
    | AudioDone
    | ResponseDone
    | OutputTranscript
    | InputTranscript
    | ItemTruncated
    | ErrorEvent
    | OtherEvent
)


def parse_server_event(raw: str | bytes) -> ServerEvent:
    """Decode one server event.

    Raises:
        ProtocolError: not a JSON object with a string ``type``, or a known type with a bad body.
    """
    try:
        event = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"model event is not JSON: {exc!r:.200}") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ProtocolError("model event is not an object with a 'type'")
    kind: str = event["type"]
    decoder = _DECODERS.get(kind)
    if decoder is None:
        return OtherEvent(kind)
    try:
        return decoder(event)
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError, binascii.Error) as exc:
        raise ProtocolError(f"bad {kind} event: {exc!r}") from None


def _audio_delta(event: dict[str, Any]) -> AudioDelta:
    pcm = binascii.a2b_base64(event["delta"], strict_mode=True)
    if len(pcm) % 2:
        raise ValueError("audio delta is not whole 16-bit samples")
    return AudioDelta(
        response_id=str(event["response_id"]),
        item_id=str(event["item_id"]),
        content_index=int(event.get("content_index", 0)),
        pcm=pcm,
    )


def _error(event: dict[str, Any]) -> ErrorEvent:
    error = event.get("error") or {}
    if not isinstance(error, dict):
        raise TypeError("error is not an object")
    return ErrorEvent(
        type=str(error.get("type", "")),
        code=error.get("code") if isinstance(error.get("code"), str) else None,
        message=str(error.get("message", "")),
        param=error.get("param") if isinstance(error.get("param"), str) else None,
        event_id=error.get("event_id") if isinstance(error.get("event_id"), str) else None,
    )


def _response_done(event: dict[str, Any]) -> ResponseDone:
    response = event["response"]
    if not isinstance(response, dict):
        raise TypeError("response is not an object")
    details = response.get("status_details") or {}
    return ResponseDone(
        response_id=str(response.get("id", "")),
        status=str(response.get("status", "")),
        reason=details.get("reason") if isinstance(details, dict) else None,
    )


_DECODERS: dict[str, Callable[[dict[str, Any]], ServerEvent]] = {
    "session.created": lambda e: SessionEvent(e["type"], dict(e.get("session") or {})),
    "session.updated": lambda e: SessionEvent(e["type"], dict(e.get("session") or {})),
    "input_audio_buffer.speech_started": lambda e: SpeechStarted(
        str(e.get("item_id", "")), int(e.get("audio_start_ms", 0))
    ),
    "input_audio_buffer.speech_stopped": lambda e: SpeechStopped(
        str(e.get("item_id", "")), int(e.get("audio_end_ms", 0))
    ),
    "response.created": lambda e: ResponseCreated(str(e["response"]["id"])),
    "response.output_audio.delta": _audio_delta,
    "response.audio.delta": _audio_delta,  # beta name (§3.1)
    "response.output_audio.done": lambda e: AudioDone(str(e["response_id"]), str(e["item_id"])),
    "response.audio.done": lambda e: AudioDone(str(e["response_id"]), str(e["item_id"])),
    "response.done": _response_done,
    "response.output_audio_transcript.done": lambda e: OutputTranscript(
        str(e.get("item_id", "")), str(e.get("transcript", ""))
    ),
    "response.audio_transcript.done": lambda e: OutputTranscript(
        str(e.get("item_id", "")), str(e.get("transcript", ""))
    ),
    "conversation.item.input_audio_transcription.completed": lambda e: InputTranscript(
        str(e.get("item_id", "")), str(e.get("transcript", ""))
    ),
    "conversation.item.truncated": lambda e: ItemTruncated(
        str(e["item_id"]), int(e.get("audio_end_ms", 0))
    ),
    "error": _error,
}
