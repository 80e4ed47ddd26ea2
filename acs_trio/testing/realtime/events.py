"""Builders for the server events of items and responses (GA names and fields, docs/protocols/realtime.md §3).

Pure functions from plain values to JSON-ready dicts.  Audio bytes
never appear here except in ``response.output_audio.delta`` (docs/protocols/realtime.md §3.2: item and done events never
carry audio).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .protocol import PCM_FORMAT, Event, IdFactory

__all__ = [
    "ResponseIds",
    "assistant_item",
    "content_part",
    "rate_limits_updated",
    "response_object",
    "usage_block",
    "user_audio_item",
]


@dataclass(frozen=True)
class ResponseIds:
    """The ids every event of one response repeats (docs/protocols/realtime.md §3.2 field lists)."""

    response_id: str
    item_id: str
    output_index: int = 0
    content_index: int = 0

    def fields(self, *, content: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "response_id": self.response_id,
            "item_id": self.item_id,
            "output_index": self.output_index,
        }
        if content:
            out["content_index"] = self.content_index
        return out


def user_audio_item(item_id: str, transcript: str | None = None) -> Event:
    """A committed user audio message; every GA item has ``object: "realtime.item"`` (docs/protocols/realtime.md §3.1)."""
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": transcript}],
    }


def assistant_item(item_id: str, *, status: str, transcript: str | None) -> Event:
    """The assistant message a response writes; GA content type ``output_audio`` (docs/protocols/realtime.md §3.1)."""
    content = [] if transcript is None else [{"type": "output_audio", "transcript": transcript}]
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def content_part(transcript: str) -> Event:
    """``part`` of ``response.content_part.added/done``.

    [INF] docs/protocols/realtime.md lists no field list for content_part events; the SDK's part union uses ``"audio"``
    (the item content type became ``output_audio`` in GA, docs/protocols/realtime.md §3.1).
    """
    return {"type": "audio", "transcript": transcript}


def usage_block(*, input_audio_ms: int, output_audio_ms: int, output_words: int) -> Event:
    """Token usage in the shape of docs/protocols/realtime.md §3.2's verbatim ``response.done`` example.

    Counts follow docs/protocols/realtime.md §4's rates (user audio 1 token / 100 ms, assistant audio 1 token / 50 ms); a
    transcript word counts as one text token [INF].  No caching happens here.
    """
    audio_in = math.ceil(input_audio_ms / 100)
    audio_out = math.ceil(output_audio_ms / 50)
    return {
        "total_tokens": audio_in + audio_out + output_words,
        "input_tokens": audio_in,
        "output_tokens": audio_out + output_words,
        "input_token_details": {
            "text_tokens": 0,
            "audio_tokens": audio_in,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": output_words, "audio_tokens": audio_out},
    }


def response_object(
    ids: ResponseIds,
    *,
    conversation_id: str,
    voice: str,
    status: str,
    status_details: Event | None = None,
    output: list[Event] | None = None,
    usage: Event | None = None,
) -> Event:
    """``response`` of ``response.created`` / ``response.done`` (docs/protocols/realtime.md §3.2)."""
    return {
        "object": "realtime.response",
        "id": ids.response_id,
        "status": status,
        "status_details": status_details,
        "output": output or [],
        "conversation_id": conversation_id,
        "output_modalities": ["audio"],
        "max_output_tokens": "inf",
        "audio": {"output": {"format": dict(PCM_FORMAT), "voice": voice}},
        "usage": usage,
        "metadata": None,
    }


def rate_limits_updated(ids: IdFactory, *, tokens_used: int) -> Event:
    """``rate_limits.updated`` with the ``requests`` and ``tokens`` entries (docs/protocols/realtime.md §3.2, §6).

    The limits are made up (docs/protocols/realtime.md §6: no per-tier numbers are documented); only the shape matters.
    """
    return {
        "type": "rate_limits.updated",
        "event_id": ids.new("event"),
        "rate_limits": [
            {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
            {
                "name": "tokens",
                "limit": 40000,
                "remaining": max(0, 40000 - tokens_used),
                "reset_seconds": 0.6,
            },
        ],
    }
