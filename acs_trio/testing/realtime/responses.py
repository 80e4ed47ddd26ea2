"""Responses as the peer streams them: the plan, its audio chunks and its closing cascade.  Pure.

A :class:`ResponsePlan` is one response's audio and transcript plus how much has gone out.  The
:class:`Responder` builds every ``response.*`` event for it in the GA order of docs/protocols/realtime.md §3.2 ("Event order
for a VAD turn"): created, output_item.added, content_part.added, audio and transcript deltas
interleaved, then the ``…done`` events, ``response.done`` and ``rate_limits.updated``.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from typing import Any

from .assets import pcm_ms
from .events import (
    ResponseIds,
    assistant_item,
    content_part,
    rate_limits_updated,
    response_object,
    usage_block,
)
from .protocol import Event, IdFactory
from .settings import PeerStats

__all__ = ["Responder", "ResponsePlan"]

logger = logging.getLogger(__name__)


@dataclass
class ResponsePlan:
    """A response being streamed: its audio, what has gone out, and whether it is over."""

    ids: ResponseIds
    kind: str  # "greeting" or "echo"
    audio: bytes
    transcript: str
    input_audio_ms: int
    voice: str
    sent_bytes: int = 0
    sent_words: int = 0
    finished: bool = False
    #: The assistant item as it stands (``in_progress`` until the closing cascade).
    item: Event = field(default_factory=dict)
    #: A function this response calls after its audio (scripted ``end_call``), if any.
    function_call: str | None = None


class Responder:
    """Makes one connection's response events and knows which response is active (at most one)."""

    def __init__(self, ids: IdFactory, stats: PeerStats, *, chunk_ms: int) -> None:
        self._ids = ids
        self._stats = stats
        self._chunk_bytes = chunk_ms * 48
        self.conversation_id = ids.new("conv")
        self.active: ResponsePlan | None = None

    def start(
        self,
        *,
        kind: str,
        audio: bytes,
        transcript: str,
        input_audio_ms: int,
        voice: str,
        function_call: str | None = None,
    ) -> tuple[ResponsePlan, list[Event]]:
        """A new active response and its opening events (created, item added, part added)."""
        ids = ResponseIds(self._ids.new("resp"), self._ids.new("item"))
        plan = ResponsePlan(ids, kind, audio, transcript, input_audio_ms, voice)
        plan.function_call = function_call
        plan.item = assistant_item(ids.item_id, status="in_progress", transcript=None)
        self.active = plan
        self._stats.responses.append(kind)
        created = response_object(
            ids, conversation_id=self.conversation_id, voice=voice, status="in_progress"
        )
        return plan, [
            self._event("response.created", response=created),
            self._event(
                "response.output_item.added",
                response_id=ids.response_id,
                output_index=0,
                item=plan.item,
            ),
            self._event("response.content_part.added", **ids.fields(), part=content_part("")),
        ]

    def next_chunk(self, plan: ResponsePlan) -> list[Event]:
        """The next ``output_audio.delta`` (+ transcript delta); ``[]`` when done or cancelled."""
        if plan.finished or plan.sent_bytes >= len(plan.audio):
            return []
        chunk = plan.audio[plan.sent_bytes : plan.sent_bytes + self._chunk_bytes]
        plan.sent_bytes += len(chunk)
        self._stats.audio_out_ms += pcm_ms(len(chunk))
        delta = base64.b64encode(chunk).decode("ascii")
        out = [self._event("response.output_audio.delta", **plan.ids.fields(), delta=delta)]
        # Spread the transcript over the audio, so a cut response has said part of it.
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
        self._stats.responses_completed += 1
        return self._close(plan, "completed", None)

    def cancel(self, plan: ResponsePlan, reason: str) -> list[Event]:
        """Closing events with status ``cancelled`` (``turn_detected``/``client_cancelled``)."""
        self._stats.cancels.append(reason)
        logger.info("local peer: response %s cancelled (%s)", plan.ids.response_id, reason)
        return self._close(plan, "cancelled", {"type": "cancelled", "reason": reason})

    def _close(self, plan: ResponsePlan, status: str, details: Event | None) -> list[Event]:
        """The ``…done`` cascade (docs/protocols/realtime.md §3.2 "Close").

        [INF] A cancelled response also closes its audio, part and item (item status
        ``incomplete``) before ``response.done``: docs/protocols/realtime.md names only ``response.done`` for a cancel,
        but clients that track parts expect every ``added`` to be matched by a ``done``.
        """
        plan.finished = True
        self.active = None
        ids = plan.ids
        transcript = " ".join(plan.transcript.split()[: plan.sent_words])
        item_status = "completed" if status == "completed" else "incomplete"
        plan.item = assistant_item(ids.item_id, status=item_status, transcript=transcript)
        usage = usage_block(
            input_audio_ms=plan.input_audio_ms,
            output_audio_ms=pcm_ms(plan.sent_bytes),
            output_words=plan.sent_words,
        )
        calls = self._function_call(plan) if status == "completed" else []
        response = response_object(
            ids,
            conversation_id=self.conversation_id,
            voice=plan.voice,
            status=status,
            status_details=details,
            output=[plan.item, *[e["item"] for e in calls if e["type"].endswith("item.done")]],
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
                "response.output_item.done",
                response_id=ids.response_id,
                output_index=0,
                item=plan.item,
            ),
            *calls,
            self._event("response.done", response=response),
            rate_limits_updated(self._ids, tokens_used=usage["total_tokens"]),
        ]

    def _function_call(self, plan: ResponsePlan) -> list[Event]:
        """A ``function_call`` output item after the audio (RP §3.2): added, arguments done,
        item done; ``call_id`` is what the client answers with a ``function_call_output``."""
        if plan.function_call is None:
            return []
        self._stats.function_calls.append(plan.function_call)
        item_id, call_id = self._ids.new("item"), self._ids.new("call")
        item = {"id": item_id, "object": "realtime.item", "type": "function_call",
                "name": plan.function_call, "call_id": call_id, "arguments": "{}"}  # fmt: skip
        rid = plan.ids.response_id
        return [
            self._event("response.output_item.added", response_id=rid, output_index=1,
                        item={**item, "status": "in_progress", "arguments": ""}),
            self._event("response.function_call_arguments.done", response_id=rid,
                        item_id=item_id, output_index=1, call_id=call_id,
                        name=plan.function_call, arguments="{}"),
            self._event("response.output_item.done", response_id=rid, output_index=1,
                        item={**item, "status": "completed"}),
        ]  # fmt: skip

    def _event(self, kind: str, **fields: Any) -> Event:
        return {"type": kind, "event_id": self._ids.new("event"), **fields}
