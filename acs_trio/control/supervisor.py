"""One call's supervisor: answer it, follow it, hang it up unless ACS already ended it.

Each answered call gets one supervisor task in the control plane's server-level nursery
(:mod:`acs_trio.control.control_plane`).  It answers the call, waits for the media socket (or for the call to end
first), waits for the media route to finish ``run_call``, and hangs the ACS call up unless the
caller is already gone, so that no ending but the caller's own leaves a caller in dead air.

The media WebSocket itself runs in hypercorn's connection task (that is where the ASGI socket
lives); it reports back through ``CallRecord.media_done``.  Hanging up happens here rather than in
that task because a connection task can be cancelled by the server, and because the media socket
may never connect at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from ..call.lifecycle import CallHandle, CallIds, CallSummary, EndReason
from ..call.predial import PreDial
from ..config import (
    HANG_UP_FIRST_RETRY_S,
    HANG_UP_MAX_RETRY_S,
    LATE_ANSWER_WATCH_S,
    ControlTimeouts,
)
from ..errors import AcsRestError
from ..wire.webhook import IncomingCall
from .acs_rest import AcsRest
from .log_safe import clip
from .logs import call_context

__all__ = ["CallRecord", "CallSupervisor", "wait_any"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class CallRecord:
    #: The callback URL's token (a secret: never in a repr or a log line).
    token: str = field(repr=False)
    handle: CallHandle
    incoming: IncomingCall = field(repr=False)
    call_connection_id: str = ""
    media_attached: bool = False
    summary: CallSummary | None = None
    #: ACS told us the call is over (CallDisconnected): never hang up.
    call_disconnected: trio.Event = field(default_factory=trio.Event)
    #: The control plane asked this call to end (``end()``); ``handle.end_requested`` is set
    #: whoever asked, the bridge included.
    stop_requested: trio.Event = field(default_factory=trio.Event)
    media_connected: trio.Event = field(default_factory=trio.Event)
    media_done: trio.Event = field(default_factory=trio.Event)
    #: The media URL's token: separate from the callback's, so a leaked callback URL (proxy logs,
    #: ACS diagnostics) does not open the media route.
    media_token: str = field(default="", repr=False)
    #: answer_call failed or timed out without a definite "no": kept only to hang up the call if
    #: ACS turns out to have answered it (``late_connection``); never counted as a live call.
    answer_failed: bool = False
    late_connection: trio.Event = field(default_factory=trio.Event)
    #: While True, ACS may re-establish the media socket (same connection id, fresh JWT).
    resume_window_open: bool = False
    media_resumed: trio.Event = field(default_factory=trio.Event)
    #: Media sockets accepted so far for this call (more than one: ACS re-established it).
    media_sockets: int = 0
    #: The model socket dialled at admission (issue 10); the media route's run_call adopts it.
    predial: PreDial | None = None
    #: Shared state only: answered by another instance, taken here by its media socket.
    adopted: bool = False
    #: Shared state only: the instance that took the call from us (then it hangs up, not us).
    handed_over_to: str = ""
    #: The media route's cancel scope around the running socket's call (a takeover's last resort).
    media_scope: trio.CancelScope | None = field(default=None, repr=False)
    #: A new media socket (same connection id, fresh JWT) is taking over from one still open.
    taking_over: bool = False

    @property
    def ids(self) -> CallIds:
        return self.handle.ids

    @property
    def disconnected(self) -> bool:
        return self.call_disconnected.is_set()

    def adopt_connection_id(self, call_connection_id: str) -> bool:
        """Learn the id (answer result, media header or first callback); False if it conflicts."""
        if not call_connection_id:
            return True
        if not self.call_connection_id:
            self.call_connection_id = call_connection_id
            self.handle.ids = CallIds(call_connection_id, self.handle.ids.correlation_id)
            return True
        return self.call_connection_id == call_connection_id

    def end(self, reason: EndReason, detail: str = "") -> None:
        self.handle.end(reason, detail)
        self.stop_requested.set()


class CallSupervisor:
    """Runs one call's life at a time per task; holds no per-call state of its own."""

    def __init__(
        self, rest: AcsRest, timeouts: ControlTimeouts, *, enable_dtmf_tones: bool = True
    ) -> None:
        self._rest = rest
        self._timeouts = timeouts
        self._dtmf = enable_dtmf_tones

    async def run(self, record: CallRecord, *, callback_url: str, transport_url: str) -> None:
        """One call's whole life.  Nothing but Cancelled escapes: the nursery is every call's."""
        with call_context(record.handle):
            await self._run(record, callback_url=callback_url, transport_url=transport_url)

    async def _run(self, record: CallRecord, *, callback_url: str, transport_url: str) -> None:
        try:
            if record.adopted or await self._answer(record, callback_url, transport_url):
                await self._follow(record)
        except Exception:
            # A bug or an untranslated third-party error: it must cost this call only.
            logger.exception("%s supervisor failed", record.ids)
            record.end(EndReason.INTERNAL_ERROR, "supervisor failed")
            if not record.disconnected and record.call_connection_id:
                try:
                    await self._hang_up(record, "supervisor failed")
                except Exception:
                    logger.exception("%s hang-up after a supervisor failure failed", record.ids)

    async def _answer(self, record: CallRecord, callback_url: str, transport_url: str) -> bool:
        incoming = record.incoming
        logger.info(
            "%s answering caller=%s server_call_id=%s",
            record.ids,
            clip(incoming.caller),
            clip(incoming.server_call_id),
        )
        try:
            with trio.fail_after(self._timeouts.answer_s):
                answered = await self._rest.answer_call(
                    incoming.incoming_call_context,
                    callback_url=callback_url,
                    transport_url=transport_url,
                    enable_dtmf_tones=self._dtmf,
                )
        except AcsRestError as exc:
            status = exc.status_code
            # A 4xx (but 408/429) is ACS's definite "not answered"; anything else may hide an
            # answer that went through.
            definite = status is not None and 400 <= status < 500 and status not in {408, 429}
            return await self._answer_failed(
                record, f"answer_call failed: {exc}", maybe_answered=not definite
            )
        except trio.TooSlowError:
            return await self._answer_failed(
                record,
                f"answer_call timed out after {self._timeouts.answer_s:.1f}s",
                maybe_answered=True,
            )
        if not record.adopt_connection_id(answered.call_connection_id):
            logger.warning(
                "%s answer returned call_connection_id=%s, media/callback said otherwise",
                record.ids,
                answered.call_connection_id,
            )
        logger.info("%s answered", record.ids)
        return True

    async def _answer_failed(self, record: CallRecord, what: str, *, maybe_answered: bool) -> bool:
        """True if the call must be followed anyway (it is connected), else drop it.

        The media socket (or a callback) can arrive before ``answer_call`` returns; if it did,
        the call is up whatever the answer said, and dropping the record would leave a caller
        in dead air with nobody to act on its CallDisconnected or hang it up.  If nothing has
        arrived yet but ACS may still have answered (a timeout, a 5xx, a network error), the
        record stays for ``LATE_ANSWER_WATCH_S`` as a tombstone: a late media socket or a
        JWT-valid callback for it means the caller is connected to nobody, so hang up.
        """
        if record.media_attached or record.call_connection_id:
            logger.warning(
                "%s %s, but ACS already connected the call (media socket or callback): "
                "following it as answered",
                record.ids,
                what,
            )
            return True
        if not maybe_answered:
            logger.warning("%s %s; call dropped", record.ids, what)
            return False
        record.answer_failed = True
        if record.predial is not None:
            record.predial.release()  # no call will run: do not hold a model socket for it
        logger.warning(
            "%s %s; watching %.0fs for a late connection to hang up", record.ids, what,
            LATE_ANSWER_WATCH_S,
        )  # fmt: skip
        with trio.move_on_after(LATE_ANSWER_WATCH_S):
            await wait_any(record.late_connection, record.stop_requested)
        if record.late_connection.is_set() and not record.disconnected:
            await self._hang_up(record, f"ACS connected the call after {what}")
        return False

    async def _follow(self, record: CallRecord) -> None:
        with trio.move_on_after(self._timeouts.media_connect_s) as waited:
            await wait_any(record.media_connected, record.stop_requested)
        if record.media_connected.is_set():
            while True:
                if await self._media_finished(record):
                    why = await self._hang_up_reason(record)
                else:
                    why = None if record.disconnected else "media handler did not finish"
                if why is not _RESUMED:
                    break
                logger.info("%s media socket re-established: the call resumes", record.ids)
        elif waited.cancelled_caught:
            record.end(EndReason.MEDIA_TIMEOUT, "media socket never connected")
            why = f"media socket did not connect within {self._timeouts.media_connect_s:.0f}s"
        else:
            request = record.handle.end_request
            why = None if record.disconnected else f"ended before media: {request}"
        if why is None:
            logger.info("%s ended by ACS; no hang-up needed", record.ids)
            return
        await self._hang_up(record, why)

    async def _media_finished(self, record: CallRecord) -> bool:
        """Wait for the media route; once the call is asked to end, for a bounded time only."""
        # This socket's event: a takeover replaces ``record.media_done`` once it is set.
        done = record.media_done
        await wait_any(done, record.handle.end_requested)
        if done.is_set():
            return True
        limit = self._timeouts.media_done_after_end_s
        with trio.move_on_after(limit):
            await done.wait()
        if not done.is_set():
            logger.warning(
                "%s media handler still running %.1fs after the call was asked to end",
                record.ids,
                limit,
            )
            return False
        return True

    async def _hang_up_reason(self, record: CallRecord) -> str | None:
        """Why to hang up after the media route finished, or None if ACS ended the call."""
        if record.disconnected:
            return None
        if record.taking_over or record.media_resumed.is_set():
            # A new socket ended this one to take over (ControlPlane.claim_media_anywhere): the
            # route resumes the call at once unless the call is ending.
            with trio.move_on_after(self._timeouts.media_takeover_s):
                await wait_any(record.media_resumed, record.stop_requested)
            if record.media_resumed.is_set():
                record.media_resumed = trio.Event()
                return _RESUMED
            if record.call_disconnected.is_set():  # (not .disconnected: mypy narrows it)
                return None
        summary = record.summary
        if summary is None:
            return "media handler was cancelled before the call ended"
        if summary.end_reason is EndReason.CALLER_HUNG_UP:
            # The media socket closing is not proof the call is over: a network drop, a stream
            # stop or a send failure close it too, and hypercorn reports 1006 for every client
            # close.  CallDisconnected is ACS's word that it is (docs/protocols/acs.md §3).
            # A shutdown during the wait hangs up at once.
            grace = self._timeouts.disconnect_grace_s
            record.resume_window_open = True
            try:
                with trio.move_on_after(grace):
                    await wait_any(
                        record.call_disconnected, record.stop_requested, record.media_resumed
                    )
            finally:
                record.resume_window_open = False
            if record.call_disconnected.is_set():  # (not .disconnected: mypy narrows it)
                return None
            if record.media_resumed.is_set():
                record.media_resumed = trio.Event()
                return _RESUMED
            return f"media socket closed and no CallDisconnected within {grace:.0f}s"
        if summary.end_reason.caller_gone:
            return None
        return f"call ended by us: {summary.end_reason.value} {summary.end_detail}".strip()

    async def hang_up(self, record: CallRecord, why: str) -> None:
        """Hang up a call this supervisor does not follow (an orphan of a crashed instance)."""
        await self._hang_up(record, why)

    async def _hang_up(self, record: CallRecord, why: str) -> None:
        """Never leave a caller in dead air: shielded, retried, within a total deadline."""
        if record.handed_over_to:
            logger.info(
                "%s not hung up here (%s): instance %s runs the call now",
                record.ids,
                why,
                record.handed_over_to,
            )
            return
        if not record.call_connection_id:
            logger.warning("%s cannot hang up (%s): no call_connection_id", record.ids, why)
            return
        logger.info("%s hanging up: %s", record.ids, why)
        total = self._timeouts.hang_up_total_s
        retry = True
        with trio.move_on_after(total, shield=True) as scope:
            attempt, delay = 0, HANG_UP_FIRST_RETRY_S
            while retry:
                attempt += 1
                retry = await self._hang_up_once(record, attempt)
                if retry:
                    logger.warning("%s hang_up retrying in %.1fs", record.ids, delay)
                    await trio.sleep(delay)
                    delay = min(delay * 2, HANG_UP_MAX_RETRY_S)
        if scope.cancelled_caught:
            logger.error(
                "%s hang_up gave up after %.0fs: the call may still be up", record.ids, total
            )

    async def _hang_up_once(self, record: CallRecord, attempt: int) -> bool:
        """One attempt; True if it is worth trying again (5xx, network error, timeout)."""
        try:
            with trio.fail_after(self._timeouts.hang_up_s):
                await self._rest.hang_up(record.call_connection_id)
        except AcsRestError as exc:
            status = exc.status_code
            if status == 404:
                # Already ended (the caller left while we waited): nothing to do.
                logger.info("%s hang_up: call already ended (404)", record.ids)
                return False
            if status is not None and status < 500 and status not in {408, 429}:
                logger.warning("%s hang_up refused, not retried: %s", record.ids, exc)
                return False
            logger.warning("%s hang_up attempt %d failed: %s", record.ids, attempt, exc)
            return True
        except trio.TooSlowError:
            logger.warning(
                "%s hang_up attempt %d timed out after %.1fs",
                record.ids,
                attempt,
                self._timeouts.hang_up_s,
            )
            return True
        logger.info("%s hung up", record.ids)
        return False


#: :meth:`CallSupervisor._hang_up_reason`'s answer when ACS re-established the media socket.
_RESUMED = "(media resumed)"


async def wait_any(*events: trio.Event) -> None:
    """Return as soon as any of ``events`` is set."""
    async with trio.open_nursery() as nursery:

        async def wait_then_cancel(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in events:
            nursery.start_soon(wait_then_cancel, event)
