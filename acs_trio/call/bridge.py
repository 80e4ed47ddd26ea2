"""One phone call: a Trio nursery relaying ACS audio to the realtime model and back.

Task tree (docs/architecture.md has the picture)::

    run_call ─ call nursery
               ├── run_acs_side ── acs_scope
               │     ├── receive_from_acs   ACS socket → model socket when idle, else
               │     │                      [model outbox, 64] → send_to_model
               │     ├── run_playout        [outbound frames] → paced AudioData / StopAudio → ACS
               │     └── watchdog           max duration, idle and media timeouts
               ├── run_actions ── actions_scope (docs/tools.md)
               │     ├── ToolRunner.run     one task per tool call → [model outbox]
               │     └── DtmfCollector.run  keypad entries → [model outbox]
               └── run_model ── one session after another (reconnect, recycle); each:
                     model_connect_scope: open the socket, then model_session_scope:
                     ├── send_to_model      [model outbox] → model socket
                     ├── receive_from_model model socket → [outbound frames, 5 min] → playout
                     ├── keep_alive         ping, pong deadline
                     └── recycle_when_quiet a fresh session before this one expires

Whatever ends the call (ACS hangs up, the model closes, a timeout, ``handle.end()``, a bug)
records an :class:`EndReason` through the :class:`CallHandle` (first cause wins), which cancels
the ACS side's scope, the actions' scope (running tools die with the call) and the model
*session*'s.  The model *connection* sits outside the
latter on purpose: trio-websocket's close handshake needs the socket's reader task alive, so the
model task closes its socket gracefully (close code saying why, within ``close_timeout_s``) after
its session scope is cancelled.  If the model is still connecting, the handshake is abandoned.
The ACS socket is closed last, under a shielded deadline, and one summary line is logged.
``run_call`` returns only when every task of the call has ended.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import trio

from ..config import ActionSettings, AgentSettings, CallLimits
from ..errors import (
    MediaClosed,
    ModelClosed,
    ModelConnectError,
    ModelError,
    ModelRejected,
    ModelSessionFailed,
    ProtocolError,
)
from ..tools import Tool, ToolContext
from ..wire import realtime as rt
from ..wire.acs_media import AudioData, AudioMetadata, DtmfData, UnknownKind, parse_acs_message
from .agent_audio import AgentAudio, OutboundFrame
from .caller_audio import CallerAudio
from .conversation import Conversation
from .conversation_store import Turn
from .dtmf import DtmfCollector, dtmf_text
from .lifecycle import CallHandle, CallSummary, EndReason
from .media_socket import MediaSocket
from .model_session import RETRYABLE_ERROR_CODES, Backoff, EventIds, configure_session, is_retryable
from .model_socket import ModelConnector, ModelSocket
from .playout import Playout
from .tool_runner import ToolRunner

__all__ = ["run_call"]

logger = logging.getLogger(__name__)

#: A write from the ACS receive task that takes this long (one ACS frame) counts as a wait.
_DIRECT_SEND_WAIT_S = 0.02
#: Endings logged at INFO; every other one (model, timeouts, protocol, bugs) at WARNING.
_ENDINGS_NOT_WORTH_A_WARNING = frozenset(
    {EndReason.CALLER_HUNG_UP, EndReason.CALL_DISCONNECTED, EndReason.SHUTDOWN}
)

#: Distinct unknown media kinds counted by name; the rest are counted as "(other)".
_MAX_UNKNOWN_KINDS = 32
#: How often a session near its expiry checks for a quiet moment to be replaced.
_QUIET_POLL_S = 0.1


async def run_call(
    media: MediaSocket,
    connect_model: ModelConnector,
    *,
    handle: CallHandle,
    agent: AgentSettings,
    limits: CallLimits,
    tools: Sequence[Tool] = (),
    actions: ActionSettings | None = None,
) -> CallSummary:
    """Bridge one call until it ends; see the module docstring.

    ``tools`` are the custom tools offered to the model (besides the built-in ``end_call`` and,
    with ``actions.transfer_target``, ``transfer_call``); ``actions`` sets their limits and the
    keypad (DTMF) handling (docs/tools.md).  What happens in the call is reported to
    ``handle.observer`` (:mod:`acs_trio.call.observer`).

    Never raises, except ``trio.Cancelled`` from an enclosing scope (after the same cleanup).
    """
    bridge = _CallBridge(media, handle, agent, limits)
    bridge.add_actions(tools, actions or ActionSettings())
    return await bridge.run(connect_model)


def _first_leaf(group: BaseExceptionGroup[Exception]) -> Exception:
    """The first exception in a (possibly nested) group: the one that ended the session."""
    first: Exception | BaseExceptionGroup[Exception] = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


class _CallLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['ids'] if self.extra else ''}] {msg}", kwargs


class _CallBridge:
    """All state of one call lives here and dies with it: nothing is shared between calls."""

    def __init__(
        self,
        media: MediaSocket,
        handle: CallHandle,
        agent: AgentSettings,
        limits: CallLimits,
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
        # The model socket while send_to_model runs; appends in the outbox or being written by it.
        self.direct_model_ws: ModelSocket | None = None
        self.outbox_pending = 0
        # Model audio → caller: a bounded frame channel drained by the paced sender.
        self.agent_audio = AgentAudio(limits.frame_ms)
        self.frames_send, frames_recv = trio.open_memory_channel[OutboundFrame](
            max(1, limits.outbound_buffer_ms // limits.frame_ms)
        )
        self.observer = handle.observer
        self.playout = Playout(
            media,
            frames_recv,
            self.summary,
            lead_ms=limits.playout_lead_ms,
            cut_line=self.agent_audio.cut_line,
            observer=self.observer,
        )
        # Cancelled by end(); created up front so an early end applies the moment they are entered.
        self.acs_scope = trio.CancelScope()
        # The current model session's scopes (new ones per session; see run_one_session).
        self.model_connect_scope = trio.CancelScope()
        self.model_session_scope = trio.CancelScope()
        self.model_connected = False
        # The model session (call/model_session.py); see docs/architecture.md.
        self.event_ids = EventIds(f"acs_{handle.ids.call_id[-12:]}")
        self.conversation = Conversation(limits.replay_max_chars)
        #: Where the conversation is kept for a resume on another instance (``REDIS_URL``).  A
        #: call taken over from a dead instance starts with that instance's conversation.
        self.saved = handle.conversation
        self.resumed = False
        if self.saved is not None:
            for index, turn in enumerate(self.saved.history()):
                said = (
                    self.conversation.caller_said
                    if turn.role == "user"
                    else self.conversation.agent_said
                )
                said(f"earlier_{index}", turn.text)
                self.resumed = True
        #: A session is open, confirmed and fed: caller audio goes to the outbox, not the gap.
        self.model_live = False
        self.sessions = 0
        self.session_live_since: float | None = None
        self.session_expires_at = float("inf")
        self.gap_since: float | None = None
        #: Caller audio while no session is open: the newest model_gap_audio_ms is kept.
        self.gap_audio: deque[str] = deque(
            maxlen=max(1, limits.model_gap_audio_ms // limits.append_batch_ms)
        )
        self.unsent: str | None = None
        self.link_dead = False
        self.recycle_requested = self.recycle_pending = False
        self.response_active = self.answer_owed = self.caller_speaking = False
        self.failed_in_a_row = 0
        #: The greeting was asked for but not delivered yet: a new session is asked again.
        self.greeting_owed = False
        #: The model socket of the live session (the keypad's barge-in tells it what was heard).
        self.live_ws: ModelSocket | None = None
        self.actions_scope = trio.CancelScope()

    def add_actions(self, tools: Sequence[Tool], actions: ActionSettings) -> None:
        """Tools (in a child scope of the call) and the keypad; docs/tools.md."""
        self.actions = actions
        context = ToolContext(call_id=self.handle.ids.call_id, caller=self.handle.caller)
        self.tool_runner = ToolRunner(
            tools=tools,
            settings=actions,
            context=context,
            outbox=self.outbox_send.clone(),
            summary=self.summary,
            log=self.log,
            wait_played_out=self.playout.wait_played_out,
            end=self.end,
            control=self.handle.control,
            observer=self.observer,
            turn_pending=lambda: self.caller_speaking or self.answer_owed,
        )
        self.dtmf_outbox = self.outbox_send.clone()
        self.dtmf: DtmfCollector | None = None
        if actions.dtmf_enabled:
            self.dtmf = DtmfCollector(
                inter_digit_timeout_s=actions.dtmf_inter_digit_timeout_ms / 1000,
                terminator=actions.dtmf_terminator,
                max_digits=actions.dtmf_max_digits,
                send=self.send_keypad_entry,
            )

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self, connect_model: ModelConnector) -> CallSummary:
        self.log.info("call started")
        self.observer.on_start(self.handle.ids, self.summary.started_at)
        self.handle.bind(self.on_end)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.run_model, connect_model)
                nursery.start_soon(self.run_acs_side)
                nursery.start_soon(self.run_actions)
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
            self.log.info("call ended %s", summary.log_fields(), extra=summary.log_extra())
            self.observer.on_end(summary)
            self.handle.finished.set()
        return summary

    def end(self, reason: EndReason, detail: str = "") -> None:
        if self.handle.end_request is None:
            # Endings the caller did not cause (model, timeouts, bugs) are an operator's business.
            level = logging.INFO if reason in _ENDINGS_NOT_WORTH_A_WARNING else logging.WARNING
            self.log.log(level, "ending call: %s %s", reason.value, detail)
        self.handle.end(reason, detail)

    def on_end(self) -> None:
        """The handle's first ``end()``: stop both sides and the actions (see the module docstring)."""
        self.acs_scope.cancel()
        self.model_session_scope.cancel()
        self.actions_scope.cancel()  # running tools die with the call
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
                            await self.on_dtmf(message)
                        elif isinstance(message, UnknownKind):
                            self.unknown_kind(message.kind)
                if self.summary.bad_acs_messages > self.limits.max_bad_messages:
                    self.end(EndReason.ACS_PROTOCOL_ERROR, "too many undecodable media messages")
                    return

    async def on_caller_audio(self, audio: AudioData) -> None:
        summary = self.summary
        summary.frames_in += 1
        summary.silent_frames_in += audio.silent
        self.observer.on_caller_audio(audio.pcm, audio.silent, self.last_acs_message)
        message = self.caller_audio.push(audio)
        if message is None:
            return
        if not self.model_live:
            # Policy: no session open (dialling, reconnecting, replacing): keep the newest
            # model_gap_audio_ms for the next session; older audio is dropped and counted.
            if len(self.gap_audio) == self.gap_audio.maxlen:
                summary.gap_audio_dropped_ms += self.limits.append_batch_ms
            self.gap_audio.append(message)
            return
        ws = self.direct_model_ws
        if ws is not None and self.outbox_pending == 0:
            await self.send_from_receiver(ws, message)
            return
        await self.queue_for_model(message)

    async def queue_for_model(self, message: str) -> None:
        """The outbox way to the model (``send_to_model`` writes it)."""
        summary = self.summary
        self.outbox_pending += 1  # until send_to_model has written it
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
            self.outbox_pending -= 1
            return

    async def send_from_receiver(self, ws: ModelSocket, message: str) -> None:
        """Write an append from the ACS receive task itself: one task hand-off less per append.

        Only taken while a session is live and no earlier append is queued in the outbox or being
        written by ``send_to_model`` (``outbox_pending == 0``), so no append can overtake another
        (no reorder).  A socket that cannot take the bytes makes this task wait: the same
        back-pressure to ACS the outbox gives when full, counted the same way if it takes long.
        A closed socket loses nothing: the append goes the outbox way, first in line (the session
        is failing; the next one gets it, see flush_gap_audio), and this session writes no more
        appends from here.
        """
        self.inbound_blocked = True
        started = trio.current_time()
        try:
            await ws.send(message)
        except ModelClosed:
            self.direct_model_ws = None
            self.inbound_blocked = False
            await self.queue_for_model(message)
            return
        finally:
            self.inbound_blocked = False
        now = trio.current_time()
        if now - started >= _DIRECT_SEND_WAIT_S:
            # The socket did not take it at once: ACS receive waited (counted like a full outbox).
            self.summary.inbound_waits += 1
            self.last_acs_message = now

    def on_metadata(self, meta: AudioMetadata) -> None:
        try:
            self.caller_audio.configure(meta)
        except ProtocolError as exc:
            self.log.error("%s: ending the call", exc)
            self.end(EndReason.ACS_PROTOCOL_ERROR, str(exc))
            return
        self.log.info("audio metadata: %s Hz, %s bytes per frame", meta.sample_rate, meta.length)
        self.agent_audio.set_rate(meta.sample_rate)
        self.observer.on_audio_format(meta.sample_rate)
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

    # --- the model side ------------------------------------------------------------------
    # Sessions follow each other on one call (call/model_session.py has the rules): a failure a
    # fresh session may fix is retried with back-off and the conversation replayed; anything
    # else, or a spent budget, ends the call (and the control plane hangs up).

    async def run_model(self, connect_model: ModelConnector) -> None:
        backoff: Backoff | None = None
        delay = 0.0
        try:
            while self.handle.end_request is None:
                failure = await self.run_one_session(connect_model, delay)
                if failure is None:
                    if self.recycle_requested:
                        self.recycle_requested = False
                        self.summary.session_recycles += 1
                        delay, backoff = 0.0, None
                        continue
                    return  # the call is ending
                since = self.session_live_since
                if since is not None and (
                    trio.current_time() - since >= self.limits.model_reconnect_budget_s
                ):
                    # A session that stayed up a whole budget: this is a new outage.  One that
                    # drops right after it is confirmed does not reset the budget (no spinning).
                    backoff = None
                retryable, retry_after = is_retryable(failure)
                backoff = backoff or Backoff(self.limits)
                next_delay = backoff.next_delay(retry_after) if retryable else None
                if next_delay is None:
                    self.model_failed(failure, retried=backoff.attempts - 1 if retryable else 0)
                    return
                self.log.warning(
                    "model session lost (%s); reconnecting in %.0f ms (attempt %d)",
                    failure,
                    next_delay * 1000,
                    backoff.attempts,
                )
                delay = next_delay
        finally:
            # Nothing more goes to the model, and no more agent audio is coming.
            self.outbox_recv.close()
            self.frames_send.close()

    async def run_one_session(
        self, connect_model: ModelConnector, delay: float
    ) -> Exception | None:
        """One model socket's life.  Returns why it failed, or None (call ending or recycle)."""
        self.model_connect_scope = connect_scope = trio.CancelScope()
        self.model_session_scope = session_scope = trio.CancelScope()
        self.model_connected = False
        self.session_live_since = None
        failure: Exception | None = None
        try:
            with connect_scope:
                await trio.sleep(delay)
                async with connect_model() as ws:
                    self.model_connected = True
                    try:
                        with session_scope:
                            await self.run_model_session(ws)
                    finally:
                        self.model_live = False
                        self.live_ws = None
                        if self.link_dead:
                            connect_scope.cancel()  # half-open: no close handshake to wait for
                        else:
                            # Shielded: if the server cancels us from outside, still say goodbye.
                            with trio.move_on_after(
                                self.limits.close_timeout_s, shield=True
                            ) as scope:
                                await ws.close(*self.model_close_code())
                            if scope.cancelled_caught:
                                self.log.warning("model socket did not close in time")
        except* ModelError as group:
            failure = _first_leaf(group)
        except* Exception as group:
            self.crashed(group)  # ends the call: the None below stops the loop
        finally:
            self.model_live = False
            self.link_dead = False
            if self.gap_since is None:
                self.gap_since = trio.current_time()
        if self.handle.end_request is not None:
            return None
        return failure

    async def run_model_session(self, ws: ModelSocket) -> None:
        info = await configure_session(
            ws, self.agent, self.limits, self.event_ids(), tools=self.tool_runner.declarations()
        )
        now = trio.current_time()
        self.session_expires_at = info.expires_at
        self.session_live_since = now
        first = self.sessions == 0
        self.sessions += 1
        if first and not self.resumed:
            self.log.info("model session ready in %.0f ms", (now - self.summary.started_at) * 1000)
            if self.agent.greeting:
                self.playout.expect_greeting(now)
                self.greeting_owed = True
        else:
            if first:  # resumed on this instance: the conversation, not a second greeting
                self.log.info(
                    "resuming the conversation (%d items)", len(self.conversation.texts())
                )
            else:
                self.summary.model_reconnects += not self.recycle_pending
            # Items of the lost session whose audio never arrived (the transcript runs ahead
            # of it) were not heard: they are not replayed.
            for item_id in self.agent_audio.unheard_items(self.agent_audio.session):
                self.conversation.forget(item_id)
            for event in self.conversation.replay(self.event_ids):
                await ws.send(event)
        asked = False
        if self.greeting_owed and self.agent.greeting:
            # A request, not per-response instructions: the persona stays in force (L3).  Asked
            # again of a new session until a response completes or the caller speaks.
            await ws.send(rt.message_item("system", self.agent.greeting, self.event_ids()))
            await ws.send(rt.response_create(self.event_ids()))
            asked = True
        elif not first and (self.answer_owed or self.response_active):
            # The caller was waiting for an answer the old session never finished.
            self.playout.expect_answer(now, self.agent_audio.latest_seq)
            await ws.send(rt.response_create(self.event_ids()))
            asked = True
        self.tool_runner.on_new_session(responding=asked)
        self.recycle_pending = False
        self.response_active = self.answer_owed = self.caller_speaking = False
        self.agent_audio.session = self.sessions
        await self.flush_gap_audio(ws)
        if self.gap_since is not None and not first:
            self.summary.model_gap_ms.append((now - self.gap_since) * 1000)
            self.log.info("model session re-opened after %.0f ms", (now - self.gap_since) * 1000)
        self.gap_since = None
        self.outbox_pending = 0  # flushed above; nothing entered it while no session was live
        self.model_live = True
        self.live_ws = ws
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.send_to_model, ws)
            nursery.start_soon(self.receive_from_model, ws)
            nursery.start_soon(self.keep_alive, ws)
            nursery.start_soon(self.recycle_when_quiet, nursery.cancel_scope)

    def model_close_code(self) -> tuple[int, str]:
        if self.handle.end_request is None:
            return 1000, "session replaced"
        reason = self.handle.end_request[0]
        code = {EndReason.SHUTDOWN: 1001, EndReason.INTERNAL_ERROR: 1011}.get(reason, 1000)
        return code, f"call ended: {reason.value}"

    def model_failed(self, exc: Exception, *, retried: int) -> None:
        """The model side is beyond repair: end the call (the control plane hangs up)."""
        detail = str(exc) if not retried else f"{exc} (after {retried} reconnect attempts)"
        if isinstance(exc, ModelConnectError | ModelRejected):
            reason = EndReason.MODEL_CONNECT_FAILED
        elif isinstance(exc, ModelClosed):
            reason = EndReason.MODEL_CLOSED
        else:
            reason = EndReason.MODEL_ERROR
        self.log.warning("model failed, ending the call: %s", detail)
        self.end(reason, detail)

    async def flush_gap_audio(self, ws: ModelSocket) -> None:
        """Caller audio of the gap goes to the new session, oldest first, before new audio."""
        if self.unsent is not None:
            await ws.send(self.unsent)
            self.sent_to_model(self.unsent)
            self.unsent = None
        while True:
            try:
                message = self.outbox_recv.receive_nowait()
            except trio.WouldBlock:
                break
            await ws.send(message)
            self.sent_to_model(message)
        while self.gap_audio:
            await ws.send(self.gap_audio.popleft())

    def sent_to_model(self, message: str) -> None:
        """A tool's output reached a session: the next replay carries it after its call.

        Logged when written, not when queued: an output still in the outbox at a switch goes
        to the new session after the replay (flush_gap_audio), never twice.
        """
        output = rt.parse_function_call_output(message)
        if output is not None:
            self.conversation.function_output(*output)

    async def keep_alive(self, ws: ModelSocket) -> None:
        """A ping every ``model_ping_interval_s``; no pong in time means a half-open link."""
        limits = self.limits
        while True:
            await trio.sleep(limits.model_ping_interval_s)
            with trio.move_on_after(limits.model_pong_timeout_s) as scope:
                await ws.ping()
            if scope.cancelled_caught:
                self.link_dead = True
                raise ModelSessionFailed(
                    f"no pong within {limits.model_pong_timeout_s:g}s: the link is dead",
                    retryable=True,
                )

    async def recycle_when_quiet(self, session: trio.CancelScope) -> None:
        """Before the session's time limit, move to a fresh one while nobody is speaking."""
        limits = self.limits
        expires_at = self.session_expires_at
        if expires_at - limits.session_recycle_margin_s <= trio.current_time():
            # Already "expiring" as it opens: a fresh session would be too, so replacing it
            # would loop.  Our clock disagrees with the service's; let the service end it
            # (session_expired and 1001 are retried).
            self.log.warning(
                "model session expires_at is %.0f s away as it opens (clock skew?): "
                "not replacing it early",
                expires_at - trio.current_time(),
            )
            return
        await trio.sleep_until(expires_at - limits.session_recycle_margin_s)
        force_at = expires_at - limits.session_recycle_force_s
        # Polled: "quiet" is a conjunction of states owned by three tasks.
        while True:
            if trio.current_time() >= force_at or self.quiet():
                break
            await trio.sleep(_QUIET_POLL_S)
        self.log.info(
            "replacing the model session before it expires (in %.0f s)",
            expires_at - trio.current_time(),
        )
        self.recycle_requested = self.recycle_pending = True
        session.cancel()

    def quiet(self) -> bool:
        """No answer playing or being generated, and the caller not speaking."""
        return not (
            self.response_active
            or self.caller_speaking
            or self.playout.playing(trio.current_time())
        )

    async def send_to_model(self, ws: ModelSocket) -> None:
        # While this task runs, the ACS receive task writes appends itself whenever no earlier
        # append is queued or being written here (send_from_receiver; outbox_pending counts them).
        self.direct_model_ws = ws
        try:
            async for message in self.outbox_recv:
                try:
                    await ws.send(message)
                except ModelClosed:
                    self.unsent = message  # the next session gets it first: no caller audio lost
                    raise
                # Only appends are counted (tool and keypad messages share the outbox).
                if message.startswith(rt.APPEND_HEAD):
                    self.outbox_pending -= 1
                else:
                    self.sent_to_model(message)
        finally:
            self.direct_model_ws = None

    async def receive_from_model(self, ws: ModelSocket) -> None:
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
            state = self.agent_audio.item(event.response_id, event.item_id)
            if self.agent_audio.cut_line.is_cut(state.response_seq):
                await self.settle_cut_items(ws, {})  # an item first seen after its cut
            else:
                await self.push_frames(self.agent_audio.frames(event))
        elif isinstance(event, rt.SpeechStarted):
            self.caller_speaking = True
            self.greeting_owed = False
            self.conversation.caller_turn(event.item_id)
            await self.on_speech_started(ws)
        elif isinstance(event, rt.SpeechStopped):
            self.last_speech = now = trio.current_time()
            self.observer.on_caller_speech(False, now)
            self.caller_speaking = False
            self.answer_owed = True
            self.summary.turns += 1
            self.playout.expect_answer(now, self.agent_audio.latest_seq)
        elif isinstance(event, rt.ResponseCreated):
            self.agent_audio.seq_of(event.response_id)
            self.response_active = True
            self.tool_runner.on_response_created()
            self.answer_owed = False
        elif isinstance(event, rt.OutputItemAdded):
            if event.item_type == "message":
                self.agent_audio.item(event.response_id, event.item_id)
                self.conversation.agent_item(event.item_id)
        elif isinstance(event, rt.FunctionCall):
            # Logged for the replay: a later session must know the call to take its output.
            self.conversation.function_call(event.call_id, event.name, event.arguments)
            self.tool_runner.on_function_call(event)
        elif isinstance(event, rt.AudioDone):
            self.agent_audio.item(event.response_id, event.item_id).done = True
            await self.push_frames(self.agent_audio.flush())
        elif isinstance(event, rt.ErrorEvent):
            self.on_model_error(event)
        elif isinstance(event, rt.ResponseDone):
            self.on_response_done(event)
        elif isinstance(event, rt.OutputTranscriptDelta):
            self.conversation.agent_delta(event.item_id, event.delta)
        elif isinstance(event, rt.OutputTranscript):
            self.conversation.agent_said(event.item_id, event.transcript)
            self.observer.on_transcript(
                "agent", event.transcript, trio.current_time(), item_id=event.item_id
            )
            self.save_conversation()
        elif isinstance(event, rt.InputTranscript):
            self.conversation.caller_said(event.item_id, event.transcript)
            self.observer.on_transcript(
                "caller", event.transcript, trio.current_time(), item_id=event.item_id
            )
            self.save_conversation()

    def on_model_error(self, event: rt.ErrorEvent) -> None:
        self.summary.model_errors += 1
        if event.code in RETRYABLE_ERROR_CODES:
            raise ModelSessionFailed(f"{event.code}: {event.message}", retryable=True)
        if event.fatal:
            self.end(EndReason.MODEL_ERROR, f"{event.code}: {event.message}")
            return
        self.log.warning(
            "model error (the call goes on): %s %s: %s (event %s)",
            event.type,
            event.code,
            event.message,
            event.event_id,
        )

    def on_response_done(self, event: rt.ResponseDone) -> None:
        self.response_active = False
        self.tool_runner.on_response_done(event.response_id, event.status)
        if not event.failed:
            self.greeting_owed = False
            if event.status == "completed":
                self.failed_in_a_row = 0
            self.log.debug("response %s %s (%s)", event.response_id, event.status, event.reason)
            return
        self.summary.failed_responses += 1
        self.failed_in_a_row += 1
        self.log.warning(
            "response %s %s: %s %s (%d in a row)",
            event.response_id,
            event.status,
            event.reason,
            event.error or "",
            self.failed_in_a_row,
        )
        if self.failed_in_a_row >= self.limits.max_failed_responses:
            self.end(
                EndReason.MODEL_ERROR,
                f"{self.failed_in_a_row} responses in a row {event.status}: "
                f"{event.reason or event.error or '-'}",
            )

    async def on_speech_started(self, ws: ModelSocket) -> None:
        self.last_speech = trio.current_time()
        # Every response so far is now interrupted: none of its audio may reach the caller.
        self.agent_audio.cut_all()
        cut = self.playout.interrupt()
        self.observer.on_caller_speech(True, self.last_speech, barge_in=cut is not None)
        if cut is not None:
            self.summary.barge_ins += 1
            self.log.info(
                "barge-in: agent audio stopped (%.0f ms flushed, %d queued frames dropped)",
                cut.flushed_ms,
                cut.dropped_frames,
            )
        await self.settle_cut_items(ws, {} if cut is None else cut.played_ms)

    def save_conversation(self) -> None:
        """Hand the conversation as heard to the store (``REDIS_URL``); never waits."""
        if self.saved is not None:
            self.saved.save(
                [
                    Turn("user" if role == "user" else "assistant", text)
                    for role, text in self.conversation.texts()
                ]
            )

    async def settle_cut_items(self, ws: ModelSocket, played: dict[str, float]) -> None:
        """Tell the model what the caller heard of each cut item: truncate at the played ms
        the items heard in part, delete those not heard at all (docs/protocols/realtime.md §5)."""
        now = trio.current_time()
        for item_id, state in self.agent_audio.unsettled_cut_items():
            heard = min(
                played.get(item_id, self.playout.played_ms(item_id, now)), state.received_ms
            )
            # Whole ms, never more than was played (and at least one frame when any was).
            heard_ms = math.floor(heard + 1e-6)
            state.settled = True
            if state.done and heard >= state.received_ms - self.limits.frame_ms:
                continue  # heard in full (to within a frame: resampling rounds the length)
            if state.session != self.agent_audio.session:
                # An item of an earlier session (still playing when it was replaced): that
                # session is gone; only the log, for the next replay, learns what was heard.
                if heard_ms <= 0:
                    self.conversation.forget(item_id)
                else:
                    self.conversation.heard(item_id, heard_ms / state.received_ms)
                continue
            if heard_ms <= 0:
                self.summary.items_deleted += 1
                self.conversation.forget(item_id)
                self.log.info("barge-in: deleting %s (nothing of it was heard)", item_id)
                await ws.send(rt.item_delete(item_id, self.event_ids()))
                continue
            self.summary.truncated_at_ms.append(heard_ms)
            self.conversation.heard(item_id, heard_ms / state.received_ms)
            self.log.info("barge-in: truncating %s at %d ms (as played)", item_id, heard_ms)
            await ws.send(rt.truncate_item(item_id, heard_ms, event_id=self.event_ids()))
        self.save_conversation()  # what was heard of the cut items changed the log

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

    # --- tools and the keypad (docs/tools.md) -------------------------------------------------

    async def run_actions(self) -> None:
        """Tool calls and the keypad timer, in a scope the call's end cancels."""
        with self.actions_scope, self.dtmf_outbox:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.tool_runner.run)
                    if self.dtmf is not None:
                        nursery.start_soon(self.dtmf.run)
            except* Exception as group:
                self.crashed(group)

    async def on_dtmf(self, message: DtmfData) -> None:
        if self.dtmf is None:
            self.log.info("DTMF tone %r ignored (DTMF_ENABLED is off)", message.tone[:8])
            return
        self.last_speech = trio.current_time()
        if self.playout.playing(trio.current_time()):
            await self.keypad_barge_in()
        if not await self.dtmf.push(message.tone):
            self.bad_acs_message(f"unknown DTMF tone {message.tone[:16]!r}")

    async def keypad_barge_in(self) -> None:
        """A key pressed while the agent speaks interrupts it, like speech does.

        StopAudio and the truncate (or delete) at the ms played, as for speech; and since no
        server VAD event cancels the response for a key, ``response.cancel`` (realtime §2.5).
        """
        self.agent_audio.cut_all()
        cut = self.playout.interrupt()
        if cut is None:
            return
        self.summary.barge_ins += 1
        self.log.info("keypad barge-in: agent audio stopped (%.0f ms flushed)", cut.flushed_ms)
        ws = self.live_ws
        if ws is None:
            return  # between sessions: the next one's replay carries what was heard
        try:
            if self.response_active:
                await ws.send(rt.response_cancel(self.event_ids()))
            await self.settle_cut_items(ws, cut.played_ms)
        except ModelError as exc:
            # The model task sees the same failure and reconnects or ends the call.
            self.log.info("keypad barge-in: model socket unavailable (%s)", exc)

    async def send_keypad_entry(self, keys: str) -> None:
        """One keypad entry → one user text item; ``response.create`` when no response runs."""
        self.log.info("keypad entry %r sent to the model", keys)
        self.summary.dtmf_entries += 1
        try:
            await self.dtmf_outbox.send(rt.message_item("user", dtmf_text(keys)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        self.tool_runner.want_response()
