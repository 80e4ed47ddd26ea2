"""One phone call: a Trio nursery relaying ACS audio to the realtime model and back.

Task tree (docs/architecture.md has the picture)::

    run_call ─ call nursery
               ├── run_acs_side ── acs_scope
               │     ├── receive_from_acs   ACS socket → [model outbox, 64] → send_to_model
               │     ├── run_playout        [outbound frames] → paced AudioData / StopAudio → ACS
               │     └── watchdog           max duration, idle and media timeouts
               └── run_model ── model_connect_scope: open the socket, then model_session_scope:
                     ├── send_to_model      [model outbox] → model socket
                     └── receive_from_model model socket → [outbound frames, 5 min] → playout

Whatever ends the call (ACS hangs up, the model closes, a timeout, ``handle.end()``, a bug)
records an :class:`EndReason` through the :class:`CallHandle` (first cause wins), which cancels
two scopes: the ACS side's and the model *session*'s.  The model *connection* sits outside the
latter on purpose: trio-websocket's close handshake needs the socket's reader task alive, so the
model task closes its socket gracefully (close code saying why, within ``close_timeout_s``) after
its session scope is cancelled.  If the model is still connecting, the handshake is abandoned.
The ACS socket is closed last, under a shielded deadline, and one summary line is logged.
``run_call`` returns only when every task of the call has ended.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import trio

from ..config import AgentSettings, CallLimits
from ..errors import MediaClosed, ModelClosed, ModelConnectError, ModelRejected, ProtocolError
from ..wire import realtime as rt
from ..wire.acs_media import AudioData, AudioMetadata, DtmfData, UnknownKind, parse_acs_message
from .agent_audio import AgentAudio
from .caller_audio import CallerAudio
from .conversation_store import Turn
from .lifecycle import CallHandle, CallSummary, EndReason
from .media_socket import MediaSocket
from .model_socket import ModelConnector, ModelSocket
from .playout import OutboundFrame, Playout

__all__ = ["run_call"]

logger = logging.getLogger(__name__)

#: Distinct unknown media kinds counted by name; the rest are counted as "(other)".
_MAX_UNKNOWN_KINDS = 32


async def run_call(
    media: MediaSocket,
    connect_model: ModelConnector,
    *,
    handle: CallHandle,
    agent: AgentSettings,
    limits: CallLimits,
) -> CallSummary:
    """Bridge one call until it ends; see the module docstring.

    Never raises, except ``trio.Cancelled`` from an enclosing scope (after the same cleanup).
    """
    return await _CallBridge(media, handle, agent, limits).run(connect_model)


class _CallLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['ids'] if self.extra else ''}] {msg}", kwargs


class _CallBridge:
    """All state of one call lives here and dies with it: nothing is shared between calls."""

    def __init__(
        self, media: MediaSocket, handle: CallHandle, agent: AgentSettings, limits: CallLimits
    ) -> None:
        self.media = media
        self.handle = handle
        self.agent = agent
        self.limits = limits
        self.log = _CallLog(logger, {"ids": handle.ids})
        now = trio.current_time()
        self.summary = CallSummary(ids=handle.ids, started_at=now)
        self.media_closed_by_peer = False
        self.last_acs_message = now
        self.last_speech = now
        self.inbound_blocked = False
        # Caller audio → model: a bounded outbox; the producer waits when it is full.
        self.caller_audio = CallerAudio(limits.append_batch_ms)
        self.outbox_send, self.outbox_recv = trio.open_memory_channel[str](limits.model_outbox_size)
        # Model audio → caller: a bounded frame channel drained by the paced sender.
        self.agent_audio = AgentAudio(limits.frame_ms)
        self.frames_send, frames_recv = trio.open_memory_channel[OutboundFrame](
            max(1, limits.outbound_buffer_ms // limits.frame_ms)
        )
        self.playout = Playout(media, frames_recv, self.summary, lead_ms=limits.playout_lead_ms)
        # Cancelled by end(); created up front so an early end applies the moment they are entered.
        self.acs_scope = trio.CancelScope()
        self.model_connect_scope = trio.CancelScope()
        self.model_session_scope = trio.CancelScope()
        self.model_connected = False

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self, connect_model: ModelConnector) -> CallSummary:
        self.log.info("call started")
        self.handle.bind(self.on_end)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.run_model, connect_model)
                nursery.start_soon(self.run_acs_side)
        finally:
            reason, detail = self.handle.end_request or (
                EndReason.CANCELLED,
                "cancelled by the server",
            )
            if not self.media_closed_by_peer:
                with trio.move_on_after(self.limits.close_timeout_s, shield=True) as scope:
                    await self.media.close(reason.media_close_code, reason.value)
                if scope.cancelled_caught:
                    self.log.warning("media socket did not close in time")
            summary = self.summary
            summary.ended_at = trio.current_time()
            summary.end_reason, summary.end_detail = reason, detail
            self.log.info("call ended %s", summary.log_fields())
            self.handle.finished.set()
        return summary

    def end(self, reason: EndReason, detail: str = "") -> None:
        if self.handle.end_request is None:
            self.log.info("ending call: %s %s", reason.value, detail)
        self.handle.end(reason, detail)

    def on_end(self) -> None:
        """The handle's first cancel: stop both sides (see the module docstring)."""
        self.acs_scope.cancel()
        self.model_session_scope.cancel()
        if not self.model_connected:
            self.model_connect_scope.cancel()

    def crashed(self, group: BaseExceptionGroup[Exception]) -> None:
        """A bug: log it with its traceback and end this call (and only this call)."""
        self.log.error("call task crashed", exc_info=group)
        self.end(EndReason.INTERNAL_ERROR, repr(group.exceptions[0]))

    async def watchdog(self) -> None:
        limits = self.limits
        end_by = self.summary.started_at + limits.max_duration_s
        while True:
            now = trio.current_time()
            idle_at = max(self.last_speech, self.playout.last_write) + limits.idle_timeout_s
            # Time we spend waiting on a slow model is not a dead ACS line.
            media_at = (
                now + limits.media_timeout_s
                if self.inbound_blocked
                else self.last_acs_message + limits.media_timeout_s
            )
            if now >= end_by:
                self.end(EndReason.MAX_DURATION, f"{limits.max_duration_s:g}s reached")
                return
            if now >= idle_at:
                self.end(EndReason.IDLE_TIMEOUT, f"no speech for {limits.idle_timeout_s:g}s")
                return
            if now >= media_at:
                self.end(EndReason.MEDIA_TIMEOUT, f"no media for {limits.media_timeout_s:g}s")
                return
            await trio.sleep_until(min(end_by, idle_at, media_at))

    # --- the ACS side ----------------------------------------------------------------------

    async def run_acs_side(self) -> None:
        with self.acs_scope:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.receive_from_acs)
                    nursery.start_soon(self.run_playout)
                    nursery.start_soon(self.watchdog)
            except* Exception as group:
                self.crashed(group)

    async def run_playout(self) -> None:
        await self.playout.run()
        if self.playout.media_closed:
            self.media_closed_by_peer = True
            self.end(EndReason.CALLER_HUNG_UP, "media socket closed while sending")

    async def receive_from_acs(self) -> None:
        with self.outbox_send:
            while True:
                try:
                    raw = await self.media.receive()
                except MediaClosed as exc:
                    self.media_closed_by_peer = True
                    self.end(EndReason.CALLER_HUNG_UP, f"media socket closed (code {exc.code})")
                    return
                self.last_acs_message = trio.current_time()
                if isinstance(raw, bytes):
                    self.bad_acs_message(f"binary frame of {len(raw)} bytes")
                elif len(raw) > self.limits.max_acs_message_bytes:
                    self.bad_acs_message(f"oversized message of {len(raw)} bytes")
                else:
                    try:
                        message = parse_acs_message(raw)
                    except ProtocolError as exc:
                        self.bad_acs_message(str(exc))
                    else:
                        if type(message) is AudioData:
                            await self.on_caller_audio(message)
                        elif isinstance(message, AudioMetadata):
                            self.on_metadata(message)
                        elif isinstance(message, DtmfData):
                            self.log.info("DTMF tone %r", message.tone)
                        elif isinstance(message, UnknownKind):
                            self.unknown_kind(message.kind)
                if self.summary.bad_acs_messages > self.limits.max_bad_messages:
                    self.end(EndReason.ACS_PROTOCOL_ERROR, "too many undecodable media messages")
                    return

    async def on_caller_audio(self, audio: AudioData) -> None:
        summary = self.summary
        summary.frames_in += 1
        summary.silent_frames_in += audio.silent
        message = self.caller_audio.push(audio)
        if message is None:
            return
        try:
            try:
                self.outbox_send.send_nowait(message)
            except trio.WouldBlock:
                # Policy: caller audio is never dropped or reordered; ACS receive waits (TCP
                # back-pressure to ACS) and the wait is counted.
                summary.inbound_waits += 1
                self.inbound_blocked = True
                await self.outbox_send.send(message)
                self.inbound_blocked = False
                self.last_acs_message = trio.current_time()
        except trio.BrokenResourceError:
            # The model side has already stopped: the call is ending (its cancellation is on its
            # way to this task); the audio has nowhere to go.
            return

    def on_metadata(self, meta: AudioMetadata) -> None:
        try:
            self.caller_audio.configure(meta)
        except ProtocolError as exc:
            self.log.error("%s: ending the call", exc)
            self.end(EndReason.ACS_PROTOCOL_ERROR, str(exc))
            return
        self.log.info("audio metadata: %s Hz, %s bytes per frame", meta.sample_rate, meta.length)
        self.agent_audio.set_rate(meta.sample_rate)
        self.summary.sample_rate_hz = meta.sample_rate

    def bad_acs_message(self, what: str) -> None:
        count = self.summary.bad_acs_messages = self.summary.bad_acs_messages + 1
        if count <= 3 or count % 100 == 0:
            self.log.warning("ignoring bad media message #%d from ACS: %s", count, what[:200])

    def unknown_kind(self, kind: str) -> None:
        kinds = self.summary.unknown_kinds
        if kind not in kinds and len(kinds) >= _MAX_UNKNOWN_KINDS:
            kind = "(other)"  # a peer inventing kinds must not grow the call's memory
        elif kind not in kinds:
            self.log.info("ignoring media messages of unknown kind %r", kind[:64])
        kinds[kind] = kinds.get(kind, 0) + 1

    # --- the model side --------------------------------------------------------------------

    async def run_model(self, connect_model: ModelConnector) -> None:
        try:
            with self.model_connect_scope:
                async with connect_model() as ws:
                    self.model_connected = True
                    try:
                        with self.model_session_scope:
                            await self.run_model_session(ws)
                    finally:
                        # Shielded: if the server cancels us from outside, still say goodbye.
                        with trio.move_on_after(self.limits.close_timeout_s, shield=True) as scope:
                            await ws.close(*self.model_close_code())
                        if scope.cancelled_caught:
                            self.log.warning("model socket did not close in time")
        except* (ModelConnectError, ModelRejected) as group:
            self.end(EndReason.MODEL_CONNECT_FAILED, str(group.exceptions[0]))
        except* Exception as group:
            self.crashed(group)

    async def run_model_session(self, ws: ModelSocket) -> None:
        try:
            ready = trio.current_time()
            self.log.info("model connected in %.0f ms", (ready - self.summary.started_at) * 1000)
            await ws.send(rt.session_update(self.agent))
            history = self.handle.conversation.history() if self.handle.conversation else ()
            if history:
                # Resumed on another instance: the model gets the conversation, not a greeting.
                self.log.info("resuming with %d earlier turn(s)", len(history))
                for turn in history:
                    await ws.send(rt.conversation_item(turn.role, turn.text))
            elif self.agent.greeting:
                self.playout.expect_greeting(ready)
                await ws.send(rt.response_create(self.agent.greeting))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.send_to_model, ws)
                nursery.start_soon(self.receive_from_model, ws)
        except* ModelClosed as group:
            self.model_closed(group.exceptions[0])
        except* Exception as group:
            self.crashed(group)

    def model_close_code(self) -> tuple[int, str]:
        reason = (self.handle.end_request or (EndReason.CANCELLED, ""))[0]
        code = {EndReason.SHUTDOWN: 1001, EndReason.INTERNAL_ERROR: 1011}.get(reason, 1000)
        return code, f"call ended: {reason.value}"

    def model_closed(self, exc: BaseException) -> None:
        self.end(EndReason.MODEL_CLOSED, str(exc))

    async def send_to_model(self, ws: ModelSocket) -> None:
        with self.outbox_recv:
            async for message in self.outbox_recv:
                await ws.send(message)

    async def receive_from_model(self, ws: ModelSocket) -> None:
        with self.frames_send:
            while True:
                raw = await ws.receive()
                try:
                    event = rt.parse_server_event(raw)
                except ProtocolError as exc:
                    self.summary.bad_model_messages += 1
                    self.log.warning("ignoring bad model event: %s", str(exc)[:200])
                    continue
                await self.on_model_event(ws, event)

    async def on_model_event(self, ws: ModelSocket, event: rt.ServerEvent) -> None:
        if type(event) is rt.AudioDelta:
            await self.push_frames(self.agent_audio.frames(event))
        elif isinstance(event, rt.SpeechStarted):
            await self.on_speech_started(ws)
        elif isinstance(event, rt.SpeechStopped):
            self.last_speech = now = trio.current_time()
            self.summary.turns += 1
            self.playout.expect_answer(now, self.agent_audio.latest_seq)
        elif isinstance(event, rt.ResponseCreated):
            self.agent_audio.seq_of(event.response_id)
        elif isinstance(event, rt.AudioDone):
            await self.push_frames(self.agent_audio.flush())
        elif isinstance(event, rt.ErrorEvent):
            self.summary.model_errors += 1
            if event.fatal:
                self.end(EndReason.MODEL_ERROR, f"{event.code}: {event.message}")
            else:
                self.log.warning(
                    "model error (the call goes on): %s %s: %s",
                    event.type,
                    event.code,
                    event.message,
                )
        elif isinstance(event, rt.ResponseDone):
            self.log.debug("response %s %s (%s)", event.response_id, event.status, event.reason)
        elif isinstance(event, rt.OutputTranscript | rt.InputTranscript):
            self.log.debug("%s: %s", type(event).__name__, event.transcript)
            if self.handle.conversation is not None and event.transcript:
                role: Literal["user", "assistant"] = (
                    "user" if isinstance(event, rt.InputTranscript) else "assistant"
                )
                self.handle.conversation.record(Turn(role, event.transcript))

    async def on_speech_started(self, ws: ModelSocket) -> None:
        self.last_speech = trio.current_time()
        # Every response so far is now interrupted: none of its audio may reach the caller.
        cut = self.playout.interrupt(self.agent_audio.cut_all())
        if cut is None:
            return
        self.summary.barge_ins += 1
        if cut.item_id is None or cut.sent_ms <= 0:
            self.log.info("barge-in before any audio of the answer was sent: no truncate")
            return
        audio_end_ms = int(min(cut.sent_ms, self.agent_audio.received_ms(cut.item_id)))
        self.log.info(
            "barge-in: agent audio stopped; truncating %s at %d ms (%d queued frames dropped)",
            cut.item_id,
            audio_end_ms,
            cut.dropped_frames,
        )
        if audio_end_ms > 0:
            self.summary.truncated_at_ms.append(audio_end_ms)
            await ws.send(rt.truncate_item(cut.item_id, audio_end_ms))

    async def push_frames(self, frames: list[OutboundFrame]) -> None:
        try:
            for frame in frames:
                try:
                    self.frames_send.send_nowait(frame)
                except trio.WouldBlock:
                    # Policy: more than outbound_buffer_ms of unplayed agent audio: the model
                    # reader waits (back-pressure to the model socket) and the wait is counted.
                    self.summary.outbound_waits += 1
                    await self.frames_send.send(frame)
        except trio.BrokenResourceError:
            return  # the sender has stopped: the call is ending; nobody would hear it
