"""One connection's state machine: client event in, server events out.  Pure and sync.

:class:`PeerSession` never touches a socket or a clock.  The I/O loop in :mod:`.connection` feeds it
each frame and sends what it returns; a :class:`ResponsePlan` in that list means "stream this
response", which the loop's sender task does by calling :meth:`PeerSession.next_chunk` at its own
pace.  Because both tasks share this object and trio only switches at ``await``, a barge-in that
cancels a response (here, synchronously) is seen by the sender before it sends another delta.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass, field
from typing import Any

from .assets import GREETING_TRANSCRIPT, pcm_ms
from .events import user_audio_item
from .inputs import InputBuffer
from .protocol import (
    Event,
    IdFactory,
    PeerRequestError,
    default_session,
    error_event,
    merge_session_update,
    parse_client_event,
)
from .responses import Responder, ResponsePlan
from .settings import LocalPeerSettings, PeerStats
from .vad import VadEvent

__all__ = ["Outgoing", "PeerSession", "ResponsePlan"]

logger = logging.getLogger(__name__)


#: What :meth:`PeerSession.receive` returns: events to send now, or a response to stream.
Outgoing = Event | ResponsePlan


@dataclass
class _Item:
    item: Event
    user_audio_bytes: int = 0
    #: The response that writes this item, for assistant items.
    plan: ResponsePlan | None = None
    truncated_ms: int | None = None

    @property
    def model_audio_bytes(self) -> int:
        """Model audio generated (sent) for this item so far; 0 for user items."""
        return 0 if self.plan is None else self.plan.sent_bytes


@dataclass
class _Conversation:
    items: dict[str, _Item] = field(default_factory=dict)

    @property
    def last_id(self) -> str | None:
        return next(reversed(self.items), None)


class PeerSession:
    """State of one Realtime connection as the local test peer plays it."""

    def __init__(
        self, settings: LocalPeerSettings, stats: PeerStats, *, greeting: bytes, expires_at: int
    ) -> None:
        self.settings = settings
        self.stats = stats
        self.ids = IdFactory(settings.id_seed)
        self.session = default_session(self.ids, model=settings.model, expires_at=expires_at)
        self.responder = Responder(self.ids, stats, chunk_ms=settings.chunk_ms)
        self._greeting = greeting
        self._conv = _Conversation()
        self._input = InputBuffer(settings, self.turn_detection)
        self._turn_item: str | None = None
        self._last_user_audio: bytes | None = None
        self._echoes = 0

    @property
    def turn_detection(self) -> dict[str, Any] | None:
        td: dict[str, Any] | None = self.session["audio"]["input"]["turn_detection"]
        return td

    def opening(self) -> list[Event]:
        """``session.created``: the first event on a connection (docs/protocols/realtime.md §3.2)."""
        return [self._event("session.created", session=self.session)]

    def receive(self, message: str | bytes) -> list[Outgoing]:
        """Handle one client frame.  Protocol mistakes become an ``error`` event, never a raise."""
        client_event_id: str | None = None
        try:
            if not isinstance(message, str):
                raise PeerRequestError(
                    "invalid_value", "Binary frames are not supported; send JSON text frames."
                )
            event = parse_client_event(message)
            raw_id = event.get("event_id")
            client_event_id = raw_id if isinstance(raw_id, str) else None
            self.stats.events_received[event["type"]] += 1
            handler = getattr(self, "_on_" + event["type"].replace(".", "_"))
            out: list[Outgoing] = handler(event)
            return out
        except PeerRequestError as err:
            self.stats.errors.append(err.code)
            logger.info("local peer: %s error: %s", err.code, err.message)
            return [error_event(self.ids, err, client_event_id or err.event_id)]

    # -- streaming (called by the sender task) ---------------------------------------------------

    @property
    def active(self) -> ResponsePlan | None:
        """The response being streamed, if any (at most one writes the conversation, docs/protocols/realtime.md §2.5)."""
        return self.responder.active

    def next_chunk(self, plan: ResponsePlan) -> list[Event]:
        """The next audio delta of ``plan`` (+ transcript delta); ``[]`` when done or cancelled."""
        return self.responder.next_chunk(plan)

    def complete(self, plan: ResponsePlan) -> list[Event]:
        """Closing events of a fully sent response; ``[]`` if it was cancelled meanwhile."""
        return self.responder.complete(plan)

    # -- client events ---------------------------------------------------------------------------

    def _on_session_update(self, event: Event) -> list[Outgoing]:
        self.session = merge_session_update(self.session, event.get("session"))
        self._input.configure(self.turn_detection)
        return [self._event("session.updated", session=self.session)]

    def _on_input_audio_buffer_append(self, event: Event) -> list[Outgoing]:
        audio = event.get("audio")
        try:
            if not isinstance(audio, str):
                raise ValueError
            pcm = base64.b64decode(audio, validate=True)
        except (ValueError, binascii.Error):
            # Verbatim message, code and param from docs/protocols/realtime.md §4 "Example errors".
            raise PeerRequestError(
                "invalid_value",
                "Invalid 'audio'. Expected base64-encoded audio bytes (mono PCM16 at 24kHz) "
                "but got an invalid value.",
                param="audio.audio",
            ) from None
        out: list[Outgoing] = []
        for vad_event in self._input.append(pcm):
            out += self._on_vad(vad_event)
        self.stats.audio_in_ms = pcm_ms(self._input.total_bytes)
        return out

    def _on_input_audio_buffer_commit(self, event: Event) -> list[Outgoing]:
        ms = self._input.buffered_ms()
        if ms < 100:
            # docs/protocols/realtime.md §6 "Commit": message and code as observed.
            raise PeerRequestError(
                "input_audio_buffer_commit_empty",
                f"Error committing input audio buffer: buffer too small. Expected at least 100ms "
                f"of audio, but buffer only has {ms:.2f}ms of audio.",
            )
        audio = self._input.take_all()
        item_id, self._turn_item = self._turn_item or self.ids.new("item"), None
        self._last_user_audio = audio
        return list(self._commit_user_item(item_id, audio))

    def _on_input_audio_buffer_clear(self, event: Event) -> list[Outgoing]:
        self._input.take_all()
        self._turn_item = None
        return [self._event("input_audio_buffer.cleared")]

    def _on_conversation_item_create(self, event: Event) -> list[Outgoing]:
        item = event.get("item")
        if not isinstance(item, dict) or "type" not in item:
            raise PeerRequestError(
                "invalid_value", "'item' must be an object with a 'type'.", param="item"
            )
        item = {**item, "object": "realtime.item", "status": "completed"}
        item.setdefault("id", self.ids.new("item"))
        if item["id"] in self._conv.items:
            raise PeerRequestError(
                "invalid_value", f"Item {item['id']!r} already exists.", param="item.id"
            )
        previous = self._conv.last_id
        self._conv.items[item["id"]] = _Item(item)
        return [
            self._event("conversation.item.added", previous_item_id=previous, item=item),
            self._event("conversation.item.done", previous_item_id=previous, item=item),
        ]

    def _on_conversation_item_delete(self, event: Event) -> list[Outgoing]:
        item_id = event.get("item_id")
        if not isinstance(item_id, str) or item_id not in self._conv.items:
            raise PeerRequestError(
                "item_delete_invalid_item_id",
                f"Item with item_id {item_id!r} not found.",
                param="item_id",
            )
        del self._conv.items[item_id]
        return [self._event("conversation.item.deleted", item_id=item_id)]

    def _on_conversation_item_truncate(self, event: Event) -> list[Outgoing]:
        item_id = event.get("item_id")
        record = self._conv.items.get(item_id) if isinstance(item_id, str) else None
        if record is None or not isinstance(item_id, str):
            # [INF] code named like pipecat's item_retrieve_invalid_item_id (docs/protocols/realtime.md §6); docs say so.
            raise PeerRequestError(
                "item_truncate_invalid_item_id",
                f"Item with item_id {item_id!r} not found.",
                param="item_id",
            )
        content_index = event.get("content_index", 0)
        if content_index != 0:
            raise PeerRequestError(
                "invalid_value",
                "content_index must be 0 (one audio part per item).",
                param="content_index",
            )
        end_ms = event.get("audio_end_ms")
        if not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
            raise PeerRequestError(
                "invalid_value",
                "audio_end_ms must be a non-negative integer.",
                param="audio_end_ms",
            )
        if record.model_audio_bytes == 0:
            # docs/protocols/realtime.md §5 step 4: the API's answer to truncating before any model audio.
            raise PeerRequestError(
                "unsupported_content_type",
                "Only model output audio messages can be truncated",
                param="item_id",
            )
        have_ms = pcm_ms(record.model_audio_bytes)
        if end_ms > have_ms:
            # Message shape as observed: docs/protocols/realtime.md §5 "Known truncate errors".
            raise PeerRequestError(
                "invalid_value",
                f"Audio content of {have_ms}ms is already shorter than {end_ms}ms",
                param="audio_end_ms",
            )
        record.truncated_ms = end_ms
        self.stats.truncations.append((item_id, end_ms))
        return [
            self._event(
                "conversation.item.truncated",
                item_id=item_id,
                content_index=0,
                audio_end_ms=end_ms,
            )
        ]

    def _on_response_create(self, event: Event) -> list[Outgoing]:
        if self.active is not None:
            raise PeerRequestError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: "
                f"{self.active.ids.response_id}. Wait until the response is finished before "
                "creating a new one.",
            )
        response = event.get("response")
        if isinstance(response, dict) and response.get("instructions"):
            logger.info("local peer: response.instructions ignored (this is not a model)")
        return self._start_response()

    def _on_response_cancel(self, event: Event) -> list[Outgoing]:
        wanted = event.get("response_id")
        plan = self.active
        if plan is None or (wanted is not None and wanted != plan.ids.response_id):
            raise PeerRequestError(
                "response_cancel_not_active", "Cancellation failed: no active response found"
            )
        return list(self.responder.cancel(plan, "client_cancelled"))

    # -- turns and responses ---------------------------------------------------------------------

    def _on_vad(self, vad_event: VadEvent) -> list[Outgoing]:
        td = self.turn_detection or {}
        if vad_event.kind == "started":
            self._turn_item = item_id = self.ids.new("item")
            self.stats.turns.append((vad_event.ms, None))
            out: list[Outgoing] = [
                self._event(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=vad_event.ms,
                    item_id=item_id,
                )
            ]
            if self.active is not None and td.get("interrupt_response", True):
                out += self.responder.cancel(self.active, "turn_detected")
            return out
        item_id = self._turn_item or self.ids.new("item")
        self._turn_item = None
        if self.stats.turns:
            self.stats.turns[-1] = (self.stats.turns[-1][0], vad_event.ms)
        audio, spoken = self._input.take_turn(vad_event)
        self._last_user_audio = spoken
        out = [
            self._event(
                "input_audio_buffer.speech_stopped", audio_end_ms=vad_event.ms, item_id=item_id
            ),
            *self._commit_user_item(item_id, audio),
        ]
        if td.get("create_response", True):
            if self.active is None:
                out += self._start_response()
            else:
                logger.info("local peer: turn ended during a response; no new response")
        return out

    def _commit_user_item(self, item_id: str, audio: bytes) -> list[Event]:
        """``committed`` then ``conversation.item.added``/``.done`` (docs/protocols/realtime.md §3.2 VAD-turn order)."""
        previous = self._conv.last_id
        item = user_audio_item(item_id)
        self._conv.items[item_id] = _Item(item, user_audio_bytes=len(audio))
        events = [
            self._event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id),
            self._event("conversation.item.added", previous_item_id=previous, item=item),
            self._event("conversation.item.done", previous_item_id=previous, item=item),
        ]
        if self.session["audio"]["input"].get("transcription"):
            # No ASR here: a placeholder that says so, in the GA event's shape (RP §3.2), so a
            # client's transcript view has something for the caller's turn.
            events.append(
                self._event(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=item_id,
                    content_index=0,
                    transcript=f"({pcm_ms(len(audio)) / 1000:.1f} s of speech; the local test "
                    "peer does not transcribe)",
                )
            )
        return events

    def _start_response(self) -> list[Outgoing]:
        """Opening events, then the plan: the greeting first, afterwards an echo of the caller."""
        if self._last_user_audio:
            audio, kind = self._last_user_audio, "echo"
            transcript = f"(echo of your {len(audio) / 48000:.1f} s of speech)"
        else:
            audio, kind, transcript = self._greeting, "greeting", GREETING_TRANSCRIPT
        self._echoes += kind == "echo"
        plan, opening = self.responder.start(
            kind=kind,
            audio=audio,
            transcript=transcript,
            input_audio_ms=pcm_ms(len(self._last_user_audio or b"")),
            voice=self.session["audio"]["output"].get("voice", "marin"),
            function_call="end_call" if kind == "echo" and self._hangs_up_now() else None,
        )
        self._conv.items[plan.ids.item_id] = _Item(plan.item, plan=plan)
        return [*opening, plan]

    def _hangs_up_now(self) -> bool:
        """The scripted hang-up: this echo answers phrase N and the client offers end_call."""
        tools = self.session.get("tools") or []
        offered = any(isinstance(t, dict) and t.get("name") == "end_call" for t in tools)
        return offered and self._echoes == self.settings.end_call_after_turns

    def _event(self, kind: str, **fields: Any) -> Event:
        return {"type": kind, "event_id": self.ids.new("event"), **fields}
