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
from .events import (
    ResponseIds,
    assistant_item,
    content_part,
    rate_limits_updated,
    response_object,
    usage_block,
    user_audio_item,
)
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
from .settings import LocalPeerSettings, PeerStats
from .vad import VadEvent

__all__ = ["Outgoing", "PeerSession", "ResponsePlan"]

logger = logging.getLogger(__name__)


@dataclass
class ResponsePlan:
    """A response being streamed: its audio, what has gone out, and whether it is over."""

    ids: ResponseIds
    kind: str  # "greeting" or "echo"
    audio: bytes
    transcript: str
    input_audio_ms: int
    sent_bytes: int = 0
    sent_words: int = 0
    finished: bool = False


#: What :meth:`PeerSession.receive` returns: events to send now, or a response to stream.
Outgoing = Event | ResponsePlan


@dataclass
class _Item:
    item: Event
    audio_bytes: int = 0
    truncated_ms: int | None = None


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
        self.conversation_id = self.ids.new("conv")
        self.active: ResponsePlan | None = None
        self._greeting = greeting
        self._conv = _Conversation()
        self._input = InputBuffer(settings, self.turn_detection)
        self._turn_item: str | None = None
        self._last_user_audio: bytes | None = None

    @property
    def turn_detection(self) -> dict[str, Any] | None:
        td: dict[str, Any] | None = self.session["audio"]["input"]["turn_detection"]
        return td

    def opening(self) -> list[Event]:
        """``session.created``: the first event on a connection (RP §3.2)."""
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

    def next_chunk(self, plan: ResponsePlan) -> list[Event]:
        """The next ``output_audio.delta`` (+ transcript delta); ``[]`` when done or cancelled."""
        if plan.finished or plan.sent_bytes >= len(plan.audio):
            return []
        size = self.settings.chunk_ms * 48
        chunk = plan.audio[plan.sent_bytes : plan.sent_bytes + size]
        plan.sent_bytes += len(chunk)
        self._conv.items[plan.ids.item_id].audio_bytes = plan.sent_bytes
        self.stats.audio_out_ms += pcm_ms(len(chunk))
        out = [self._event("response.output_audio.delta", **plan.ids.fields(), delta=_b64(chunk))]
        # Spread the transcript over the audio so a cut response has said part of it.
        words = plan.transcript.split()
        upto = -(-len(words) * plan.sent_bytes // len(plan.audio))
        if upto > plan.sent_words:
            text = " ".join(words[plan.sent_words : upto])
            text = text if plan.sent_words == 0 else " " + text
            plan.sent_words = upto
            out.append(
                self._event(
                    "response.output_audio_transcript.delta", **plan.ids.fields(), delta=text
                )
            )
        return out

    def complete(self, plan: ResponsePlan) -> list[Event]:
        """Closing events of a response whose audio all went out; ``[]`` if it was cancelled."""
        if plan.finished:
            return []
        self.stats.responses_completed += 1
        return self._close(plan, "completed", None)

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
            # Verbatim message, code and param from RP §4 "Example errors".
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
            # RP §6 "Commit": message and code as observed.
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
            # [INF] code named like pipecat's item_retrieve_invalid_item_id (RP §6); docs say so.
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
        if record.item.get("role") != "assistant" or record.audio_bytes == 0:
            # RP §5 step 4: the API's answer to truncating before any model audio.
            raise PeerRequestError(
                "unsupported_content_type",
                "Only model output audio messages can be truncated",
                param="item_id",
            )
        have_ms = pcm_ms(record.audio_bytes)
        if end_ms > have_ms:
            # Message shape as observed: RP §5 "Known truncate errors".
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
        return list(self._cancel(plan, "client_cancelled"))

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
                out += self._cancel(self.active, "turn_detected")
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
        """``committed`` then ``conversation.item.added``/``.done`` (RP §3.2 VAD-turn order)."""
        previous = self._conv.last_id
        item = user_audio_item(item_id)
        self._conv.items[item_id] = _Item(item, audio_bytes=len(audio))
        return [
            self._event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id),
            self._event("conversation.item.added", previous_item_id=previous, item=item),
            self._event("conversation.item.done", previous_item_id=previous, item=item),
        ]

    def _start_response(self) -> list[Outgoing]:
        """``response.created``, ``output_item.added``, ``content_part.added``, then the plan."""
        if self._last_user_audio:
            audio, kind = self._last_user_audio, "echo"
            transcript = f"(echo of your {len(audio) / 48000:.1f} s of speech)"
        else:
            audio, kind, transcript = self._greeting, "greeting", GREETING_TRANSCRIPT
        ids = ResponseIds(self.ids.new("resp"), self.ids.new("item"))
        plan = ResponsePlan(ids, kind, audio, transcript, pcm_ms(len(self._last_user_audio or b"")))
        self.active = plan
        self.stats.responses.append(kind)
        item = assistant_item(ids.item_id, status="in_progress", transcript=None)
        self._conv.items[ids.item_id] = _Item(item)
        voice = self.session["audio"]["output"].get("voice", "marin")
        return [
            self._event(
                "response.created",
                response=response_object(
                    ids, conversation_id=self.conversation_id, voice=voice, status="in_progress"
                ),
            ),
            self._event(
                "response.output_item.added", response_id=ids.response_id, output_index=0, item=item
            ),
            self._event("response.content_part.added", **ids.fields(), part=content_part("")),
            plan,
        ]

    def _cancel(self, plan: ResponsePlan, reason: str) -> list[Event]:
        self.stats.cancels.append(reason)
        logger.info("local peer: response %s cancelled (%s)", plan.ids.response_id, reason)
        return self._close(plan, "cancelled", {"type": "cancelled", "reason": reason})

    def _close(self, plan: ResponsePlan, status: str, details: Event | None) -> list[Event]:
        """The ``…done`` cascade (RP §3.2 "Close"); a cancelled item is ``incomplete`` [INF]."""
        plan.finished = True
        self.active = None
        ids = plan.ids
        transcript = " ".join(plan.transcript.split()[: plan.sent_words])
        item = assistant_item(
            ids.item_id,
            status="completed" if status == "completed" else "incomplete",
            transcript=transcript,
        )
        self._conv.items[ids.item_id].item = item
        usage = usage_block(
            input_audio_ms=plan.input_audio_ms,
            output_audio_ms=pcm_ms(plan.sent_bytes),
            output_words=plan.sent_words,
        )
        response = response_object(
            ids,
            conversation_id=self.conversation_id,
            voice=self.session["audio"]["output"].get("voice", "marin"),
            status=status,
            status_details=details,
            output=[item],
            usage=usage,
        )
        return [
            self._event("response.output_audio.done", **ids.fields()),
            self._event(
                "response.output_audio_transcript.done", **ids.fields(), transcript=transcript
            ),
            self._event(
                "response.content_part.done", **ids.fields(), part=content_part(transcript)
            ),
            self._event(
                "response.output_item.done", response_id=ids.response_id, output_index=0, item=item
            ),
            self._event("response.done", response=response),
            rate_limits_updated(self.ids, tokens_used=usage["total_tokens"]),
        ]

    def _event(self, kind: str, **fields: Any) -> Event:
        return {"type": kind, "event_id": self.ids.new("event"), **fields}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
