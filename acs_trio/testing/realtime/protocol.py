"""Pure codec for the Realtime GA wire protocol, server side: client events in, errors out.

Nothing here does I/O or keeps connection state; :mod:`.session` decides *what* to say and this
module decides *how it looks on the wire*.  Every shape cites docs/protocols/realtime.md (the project's
protocol notes) or is marked [INF] where the notes are silent and we chose.
"""

from __future__ import annotations

import copy
import json
import random
import secrets
import string
from typing import Any

__all__ = [
    "CLIENT_EVENT_TYPES",
    "PCM_FORMAT",
    "Event",
    "IdFactory",
    "PeerRequestError",
    "default_session",
    "error_event",
    "merge_session_update",
    "parse_client_event",
]

#: A JSON object as sent on the wire.
Event = dict[str, Any]

#: The only PCM format GA accepts (docs/protocols/realtime.md §4: `rate` is `Literal[24000]`).
PCM_FORMAT: dict[str, Any] = {"type": "audio/pcm", "rate": 24000}

#: Client event types this peer understands (docs/protocols/realtime.md §2).  Anything else is an ``invalid_value`` error.
CLIENT_EVENT_TYPES = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
)

#: server_vad defaults from docs/protocols/realtime.md §2.1 ("[SRC] docstrings").
SERVER_VAD_DEFAULTS: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "idle_timeout_ms": None,
    "create_response": True,
    "interrupt_response": True,
}

_ID_ALPHABET = string.ascii_letters + string.digits

#: GA session fields a client may send (docs/protocols/realtime.md §2.1 full example, plus ``prompt``/``include`` from the
#: SDK types).  Anything else, such as the beta names ``modalities`` or ``input_audio_format``
#: (docs/protocols/realtime.md §3.1), is refused as the API refuses unknown parameters [INF: code ``unknown_parameter``].
SESSION_KEYS = frozenset(
    {"type", "model", "output_modalities", "instructions", "audio", "tools", "tool_choice",
     "max_output_tokens", "tracing", "truncation", "prompt", "include"}
)  # fmt: skip
AUDIO_KEYS = {
    "input": frozenset({"format", "transcription", "noise_reduction", "turn_detection"}),
    "output": frozenset({"format", "voice", "speed"}),
}


class PeerRequestError(Exception):
    """A client event the real service would answer with an ``error`` event (docs/protocols/realtime.md §6).

    Raised by the pure code and turned into one ``error`` event by the session; the socket stays
    open, as with the real service ("Most errors are recoverable", docs/protocols/realtime.md §3.2).
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        error_type: str = "invalid_request_error",
        event_id: str | None = None,
    ) -> None:
        super().__init__(message)
        #: The client's ``event_id`` when it was readable, echoed in ``error.event_id``.
        self.event_id = event_id
        self.code = code
        self.message = message
        self.param = param
        self.error_type = error_type


class IdFactory:
    """Makes ids shaped like the service's (``event_`` + 21 alphanumerics, docs/protocols/realtime.md §2.4 examples).

    A seed makes a connection's ids reproducible in tests; without one they are random.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(secrets.randbits(64) if seed is None else seed)

    def new(self, prefix: str) -> str:
        return prefix + "_" + "".join(self._rng.choices(_ID_ALPHABET, k=21))


def error_event(ids: IdFactory, err: PeerRequestError, client_event_id: str | None) -> Event:
    """``error``: ``{event_id, error: {type, code, message, param, event_id}}`` (docs/protocols/realtime.md §3.2, §6)."""
    return {
        "type": "error",
        "event_id": ids.new("event"),
        "error": {
            "type": err.error_type,
            "code": err.code,
            "message": err.message,
            "param": err.param,
            "event_id": client_event_id,
        },
    }


def parse_client_event(text: str) -> Event:
    """Decode one client text frame into a JSON object with a known ``type``.

    Raises:
        PeerRequestError: malformed JSON (code ``invalid_json`` [INF]: the protocol notes give no example), not an
            object, no ``type`` (``missing_required_parameter``), or an unknown type
            (``invalid_value``, param ``type``, the message shape of docs/protocols/realtime.md §6's example).
    """
    try:
        event = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PeerRequestError(
            "invalid_json", f"The event is not valid JSON: {exc.msg} at position {exc.pos}."
        ) from None
    if not isinstance(event, dict):
        raise PeerRequestError("invalid_json", "The event must be a JSON object.")
    raw_id = event.get("event_id")
    event_id = raw_id if isinstance(raw_id, str) else None
    kind = event.get("type")
    if kind is None:
        raise PeerRequestError(
            "missing_required_parameter",
            "Missing required parameter: 'type'.",
            param="type",
            event_id=event_id,
        )
    if kind not in CLIENT_EVENT_TYPES:
        supported = ", ".join(f"'{t}'" for t in CLIENT_EVENT_TYPES)
        raise PeerRequestError(
            "invalid_value",
            f"Invalid value: {json.dumps(kind)}. Supported values are: {supported}.",
            param="type",
            event_id=event_id,
        )
    return event


def default_session(ids: IdFactory, *, model: str, expires_at: int) -> Event:
    """The configuration ``session.created`` announces (GA shape, docs/protocols/realtime.md §2.1 and §3.2)."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": ids.new("sess"),
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": expires_at,
        "audio": {
            "input": {
                "format": dict(PCM_FORMAT),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": dict(SERVER_VAD_DEFAULTS),
            },
            "output": {"format": dict(PCM_FORMAT), "voice": "marin", "speed": 1.0},
        },
    }


def merge_session_update(current: Event, update: Any) -> Event:
    """Validate a ``session.update``'s ``session`` and merge it into ``current`` (docs/protocols/realtime.md §2.1 rules).

    Only present fields change; ``turn_detection: null`` switches VAD off; a given
    ``turn_detection`` object is completed with the server_vad defaults.  Returns a new dict.

    Raises:
        PeerRequestError: with the offending ``param`` ("session.type" is required in GA).
    """
    if not isinstance(update, dict):
        raise PeerRequestError(
            "missing_required_parameter", "Missing required parameter: 'session'.", param="session"
        )
    kind = update.get("type")
    if kind is None:
        raise PeerRequestError(
            "missing_required_parameter",
            "Missing required parameter: 'session.type'.",
            param="session.type",
        )
    if kind != "realtime":
        # "transcription" is valid GA but this peer only plays a conversation model.
        raise PeerRequestError(
            "invalid_value",
            f"Invalid value: {json.dumps(kind)}. This local test peer supports only 'realtime'.",
            param="session.type",
        )
    merged = copy.deepcopy(current)
    for key, value in update.items():
        if key not in SESSION_KEYS:
            raise _unknown(f"session.{key}")
        if key == "audio":
            _merge_audio(merged["audio"], value)
        elif key == "model":
            continue  # "model cannot change" (docs/protocols/realtime.md §2.1); the URL picks it, so ignore quietly
        elif key == "output_modalities":
            if value not in (["audio"], ["text"]):
                raise PeerRequestError(
                    "invalid_value",
                    "output_modalities must be ['audio'] or ['text'].",
                    param="session.output_modalities",
                )
            merged[key] = value
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _merge_audio(audio: Event, update: Any) -> None:
    if not isinstance(update, dict):
        raise PeerRequestError("invalid_type", "'audio' must be an object.", param="session.audio")
    for key in update:
        if key not in AUDIO_KEYS:
            raise _unknown(f"session.audio.{key}")
    for direction, known in AUDIO_KEYS.items():
        part = update.get(direction)
        if part is None:
            continue
        if not isinstance(part, dict):
            raise PeerRequestError(
                "invalid_type",
                f"'audio.{direction}' must be an object.",
                param=f"session.audio.{direction}",
            )
        for key, value in part.items():
            param = f"session.audio.{direction}.{key}"
            if key not in known:
                raise _unknown(param)
            if key == "format":
                _check_format(value, param)
                audio[direction][key] = dict(PCM_FORMAT)
            elif key == "turn_detection" and direction == "input":
                audio["input"][key] = _turn_detection(value, param)
            else:
                audio[direction][key] = copy.deepcopy(value)


def _unknown(param: str) -> PeerRequestError:
    return PeerRequestError("unknown_parameter", f"Unknown parameter: '{param}'.", param=param)


def _check_format(value: Any, param: str) -> None:
    # docs/protocols/realtime.md §4: only {"type": "audio/pcm", "rate": 24000} is PCM; "A supplied PCM format without
    # `rate` is rejected" (docs/protocols/realtime.md §2.1 ⚠).  G.711 is valid GA, but this peer speaks PCM only.
    if not isinstance(value, dict) or value.get("type") != "audio/pcm":
        got = value.get("type") if isinstance(value, dict) else value
        raise PeerRequestError(
            "invalid_value",
            f"Invalid value: {json.dumps(got)}. This local test peer supports only 'audio/pcm'.",
            param=f"{param}.type",
        )
    if value.get("rate") != 24000:
        raise PeerRequestError(
            "invalid_value",
            f"Invalid value: {json.dumps(value.get('rate'))}. Supported values are: 24000.",
            param=f"{param}.rate",
        )


def _turn_detection(value: Any, param: str) -> Event | None:
    if value is None:
        return None  # VAD off, push-to-talk: docs/protocols/realtime.md §2.1
    if not isinstance(value, dict) or value.get("type") not in ("server_vad", "semantic_vad"):
        raise PeerRequestError(
            "invalid_value",
            "turn_detection.type must be 'server_vad' or 'semantic_vad'.",
            param=f"{param}.type",
        )
    merged = {**SERVER_VAD_DEFAULTS, **value}
    threshold = merged["threshold"]
    if not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
        raise PeerRequestError(
            "invalid_value", "threshold must be between 0 and 1.", param=f"{param}.threshold"
        )
    for key in ("prefix_padding_ms", "silence_duration_ms"):
        ms = merged[key]
        if not isinstance(ms, int) or isinstance(ms, bool) or not 0 <= ms <= 10_000:
            raise PeerRequestError(
                "invalid_value", f"{key} must be an integer 0..10000.", param=f"{param}.{key}"
            )
    for key in ("create_response", "interrupt_response"):
        if not isinstance(merged[key], bool):
            raise PeerRequestError(
                "invalid_type", f"{key} must be a boolean.", param=f"{param}.{key}"
            )
    return merged
