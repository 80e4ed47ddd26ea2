"""Realtime API client and server events: pure, sync codec for the GA protocol.

Sources (docs/protocols/realtime.md): client events §2 (GA ``session.update`` shape §2.1,
``input_audio_buffer.append`` §2.3, ``conversation.item.truncate`` §2.4, ``response.create`` §2.5);
server events §3.2 with the beta → GA renames of §3.1.  Beta names are accepted on input
(``response.audio.delta`` as well as ``response.output_audio.delta``, and so on) so a bridge keeps
working against a peer that still speaks them; everything we *send* is GA.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import AgentSettings
from ..errors import ProtocolError

__all__ = [
    "APPEND_HEAD",
    "FATAL_ERROR_CODES",
    "FUNCTION_CALL_OUTPUT_HEAD",
    "AudioDelta",
    "AudioDone",
    "ErrorEvent",
    "FunctionCall",
    "InputTranscript",
    "ItemTruncated",
    "OtherEvent",
    "OutputItemAdded",
    "OutputTranscript",
    "OutputTranscriptDelta",
    "ResponseCreated",
    "ResponseDone",
    "ServerEvent",
    "SessionEvent",
    "SpeechStarted",
    "SpeechStopped",
    "function_call_item",
    "function_call_output",
    "input_audio_append",
    "item_delete",
    "message_item",
    "parse_function_call_output",
    "parse_server_event",
    "response_cancel",
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


def _with_id(event: dict[str, Any], event_id: str | None) -> str:
    """Client events carry an ``event_id`` so an ``error`` can be tied to its request (§6)."""
    if event_id is not None:
        event = {"event_id": event_id, **event}
    return json.dumps(event)


def session_update(
    agent: AgentSettings, event_id: str | None = None, *, tools: Sequence[dict[str, Any]] = ()
) -> str:
    """The GA ``session.update`` for a phone call: PCM 24 kHz both ways, server VAD (§2.1).

    ``tools`` are function declarations ``{"type": "function", "name", "description",
    "parameters"}`` (§2.1).
    """
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
        "tools": list(tools),
        "tool_choice": "auto",
    }
    return _with_id({"type": "session.update", "session": session}, event_id)


def response_create(event_id: str | None = None) -> str:
    """A plain ``response.create``: the session's instructions (the persona) stay in force.

    Per-response ``instructions`` would *replace* the session's for that response (§2.5), so the
    greeting is asked for with a :func:`message_item` instead.
    """
    return _with_id({"type": "response.create"}, event_id)


#: Content part type of a text message per role (GA: assistant text is ``output_text``; user and
#: system text is ``input_text``; openai SDK ``realtime_conversation_item_*_message_param``).
_TEXT_PART = {"user": "input_text", "system": "input_text", "assistant": "output_text"}


def message_item(role: str, text: str, event_id: str | None = None) -> str:
    """``conversation.item.create`` of a text message (§2.4): greeting request, replay."""
    item = {"type": "message", "role": role, "content": [{"type": _TEXT_PART[role], "text": text}]}
    return _with_id({"type": "conversation.item.create", "item": item}, event_id)


def item_delete(item_id: str, event_id: str | None = None) -> str:
    """``conversation.item.delete``: the caller heard none of this item (§2.4, §5 step 4)."""
    return _with_id({"type": "conversation.item.delete", "item_id": item_id}, event_id)


#: How every :func:`input_audio_append` message starts.
APPEND_HEAD = '{"type": "input_audio_buffer.append", "audio": "'


def input_audio_append(pcm: bytes) -> str:
    """``input_audio_buffer.append`` with PCM16 24 kHz; built by concatenation (hot path)."""
    return APPEND_HEAD + binascii.b2a_base64(pcm, newline=False).decode("ascii") + '"}'


def truncate_item(
    item_id: str, audio_end_ms: int, content_index: int = 0, event_id: str | None = None
) -> str:
    """``conversation.item.truncate``: the caller heard only ``audio_end_ms`` of this item."""
    return _with_id(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": content_index,
            "audio_end_ms": audio_end_ms,
        },
        event_id,
    )


#: How every :func:`function_call_output` event starts (the bridge logs what it wrote).
FUNCTION_CALL_OUTPUT_HEAD = (
    '{"type": "conversation.item.create", "item": {"type": "function_call_output", '
)


def function_call_output(call_id: str, output: str) -> str:
    """The result of a function call as a conversation item (§2.4); ``response.create`` follows.

    The server accepts it only if a ``function_call`` item with this ``call_id`` is in the
    session's conversation (else ``invalid_tool_call_id``; §2.4).
    """
    item = {"type": "function_call_output", "call_id": call_id, "output": output}
    return json.dumps({"type": "conversation.item.create", "item": item})


def parse_function_call_output(message: str) -> tuple[str, str] | None:
    """``(call_id, output)`` of a :func:`function_call_output` event we built, else None."""
    if not message.startswith(FUNCTION_CALL_OUTPUT_HEAD):
        return None
    item = json.loads(message)["item"]
    return str(item["call_id"]), str(item["output"])


def function_call_item(call_id: str, name: str, arguments: str, event_id: str | None = None) -> str:
    """A ``function_call`` item created by the client (§2.4): the replay of a call the model
    made in an earlier session, so the new session accepts its ``function_call_output``."""
    item = {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}
    return _with_id({"type": "conversation.item.create", "item": item}, event_id)


def response_cancel(event_id: str | None = None) -> str:
    """``response.cancel`` for the active response (§2.5): a keypad barge-in has no server VAD."""
    return _with_id({"type": "response.cancel"}, event_id)


# --- server events ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionEvent:
    type: str  # session.created | session.updated
    session: dict[str, Any]

    @property
    def expires_at(self) -> float | None:
        """Unix time the session ends (``session.expires_at``, §6), if the server said."""
        value = self.session.get("expires_at")
        return float(value) if isinstance(value, int | float) and value > 0 else None


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
    #: ``status_details.error`` as "type/code: message", when present (failed responses).
    error: str | None = None

    @property
    def failed(self) -> bool:
        """``failed`` or ``incomplete`` (§3.2): the caller did not get a whole answer."""
        return self.status in {"failed", "incomplete"}


@dataclass(frozen=True, slots=True)
class OutputItemAdded:
    """``response.output_item.added``: an item of a response exists (before any audio)."""

    response_id: str
    item_id: str
    item_type: str


@dataclass(frozen=True, slots=True)
class OutputTranscriptDelta:
    item_id: str
    delta: str


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
class FunctionCall:
    """A completed function call (``response.function_call_arguments.done``, or a
    ``function_call`` item in ``response.output_item.done``; §3.2).  Both may arrive for one call:
    ``call_id`` tells them apart.  ``arguments`` is the model's JSON text, not yet checked."""

    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str


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
    | FunctionCall
    | OtherEvent
    | OutputItemAdded
    | OutputTranscriptDelta
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
    if not isinstance(details, dict):
        details = {}
    error = details.get("error")
    error_text = None
    if isinstance(error, dict):
        kind = "/".join(str(error[k]) for k in ("type", "code") if error.get(k))
        error_text = f"{kind}: {error.get('message', '')}".strip(": ")[:300]
    reason = details.get("reason")
    return ResponseDone(
        response_id=str(response.get("id", "")),
        status=str(response.get("status", "")),
        reason=reason if isinstance(reason, str) else None,
        error=error_text,
    )


def _output_item_added(event: dict[str, Any]) -> OutputItemAdded:
    item = event["item"]
    if not isinstance(item, dict):
        raise TypeError("item is not an object")
    return OutputItemAdded(
        str(event.get("response_id", "")), str(item["id"]), str(item.get("type", ""))
    )


def _function_call_done(event: dict[str, Any]) -> FunctionCall:
    return FunctionCall(
        response_id=str(event.get("response_id", "")),
        item_id=str(event.get("item_id", "")),
        call_id=_required_str(event, "call_id"),
        name=_required_str(event, "name"),
        arguments=_required_str(event, "arguments"),
    )


def _output_item_done(event: dict[str, Any]) -> ServerEvent:
    item = event["item"]
    if not isinstance(item, dict):
        raise TypeError("item is not an object")
    if item.get("type") != "function_call":
        return OtherEvent(str(event["type"]))
    return FunctionCall(
        response_id=str(event.get("response_id", "")),
        item_id=str(item.get("id", "")),
        call_id=_required_str(item, "call_id"),
        name=_required_str(item, "name"),
        arguments=_required_str(item, "arguments"),
    )


def _required_str(obj: dict[str, Any], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} is not a string")
    return value


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
    "response.output_item.added": _output_item_added,
    "response.output_audio_transcript.delta": lambda e: OutputTranscriptDelta(
        str(e.get("item_id", "")), str(e.get("delta", ""))
    ),
    "response.audio_transcript.delta": lambda e: OutputTranscriptDelta(
        str(e.get("item_id", "")), str(e.get("delta", ""))
    ),
    "conversation.item.input_audio_transcription.completed": lambda e: InputTranscript(
        str(e.get("item_id", "")), str(e.get("transcript", ""))
    ),
    "conversation.item.truncated": lambda e: ItemTruncated(
        str(e["item_id"]), int(e.get("audio_end_ms", 0))
    ),
    "error": _error,
    "response.function_call_arguments.done": _function_call_done,
    "response.output_item.done": _output_item_done,
}
