"""The server's live calls: admission, answering, supervision, hang-up and drain.

Every answered call has one :class:`CallRecord`, found by its per-call URL token (and checked
against ``callConnectionId``), and one *supervisor* task in the control plane's server-level
nursery.  The supervisor answers the call, waits for the media socket (or for the call to end
first), waits for the media route to finish ``run_call``, hangs the ACS call up unless the caller
is already gone, and removes the record.  So "registry empty" means "every call's supervisor has
ended" (and every media handler too, unless one was stuck past ``media_done_after_end_s``, which is
logged), which is what tests and the drain wait for.

The media WebSocket itself runs in hypercorn's connection task (that is where the ASGI socket
lives); it reports back through ``CallRecord.media_done``.  Hanging up happens here rather than
in that task because a connection task can be cancelled by the server, and because the media
socket may never connect at all.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

import trio

from .acs_rest import AcsRest
from .errors import AcsRestError
from .lifecycle import CallHandle, CallIds, CallSummary, EndReason
from .webhook import CallbackEvent, IncomingCall

__all__ = ["Admission", "CallRecord", "ControlPlane", "ControlTimeouts"]

logger = logging.getLogger(__name__)


#: Hang-up back-off: 0.5, 1, 2, 4, 8, 8... s between attempts, within hang_up_total_s.
HANG_UP_FIRST_RETRY_S = 0.5
HANG_UP_MAX_RETRY_S = 8.0

#: Remembered event ids / incomingCallContext hashes for duplicate detection (bounded, oldest
#: dropped).  Hashes, not the contexts: the webhook is unauthenticated, so 4096 kept contexts of
#: up to 16 KiB each would be memory anyone can make us hold.
SEEN_EVENTS_MAX = 4096


@dataclass(frozen=True)
class ControlTimeouts:
    #: Whole ``answer_call`` exchange, retries included.
    answer_s: float = 10.0
    #: From answering to the media WebSocket connecting; after this the call is hung up.
    media_connect_s: float = 30.0
    #: One ``hang_up`` attempt (azure-core's own retries included).
    hang_up_s: float = 5.0
    #: All hang-up attempts together (retried on 5xx/network errors with back-off); they run
    #: shielded, so this is also the shield's deadline.
    hang_up_total_s: float = 30.0
    #: After the media socket closed from ACS's side, how long to wait for ``CallDisconnected``
    #: before hanging up: a closed socket alone does not prove the call is over.
    disconnect_grace_s: float = 5.0
    #: Once the call has been asked to end, how long the media route gets to finish before the
    #: supervisor hangs up anyway (a send to a dead peer can block: hypercorn shields send_all).
    media_done_after_end_s: float = 5.0


@dataclass(eq=False)
class CallRecord:
    token: str
    handle: CallHandle
    incoming: IncomingCall
    call_connection_id: str = ""
    media_attached: bool = False
    summary: CallSummary | None = None
    #: ACS told us the call is over (CallDisconnected): never hang up.
    call_disconnected: trio.Event = field(default_factory=trio.Event)
    end_requested: trio.Event = field(default_factory=trio.Event)
    media_connected: trio.Event = field(default_factory=trio.Event)
    media_done: trio.Event = field(default_factory=trio.Event)

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

    def request_end(self, reason: EndReason, detail: str = "") -> None:
        self.handle.cancel(reason, detail)
        self.end_requested.set()


class Admission:
    """Outcomes of :meth:`ControlPlane.admit` (strings, so they go straight into log lines)."""

    ANSWERING = "answering"
    DUPLICATE = "duplicate"
    NOT_READY = "not_ready"
    DRAINING = "draining"
    FULL = "full"


class ControlPlane:
    """Owns the server-level call nursery; all methods are safe to call from route handlers."""

    def __init__(
        self,
        rest: AcsRest,
        *,
        public_base_url: str,
        max_concurrent_calls: int,
        timeouts: ControlTimeouts | None = None,
    ) -> None:
        self._rest = rest
        self._base = public_base_url.rstrip("/")
        self._max_calls = max_concurrent_calls
        self._timeouts = ControlTimeouts() if timeouts is None else timeouts
        self.calls: dict[str, CallRecord] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._nursery: trio.Nursery | None = None
        self._idle = trio.Event()
        self._idle.set()
        self._closed = trio.Event()
        #: Set when :meth:`run` has returned (after :meth:`close`, every supervisor done).
        self.finished = trio.Event()
        self.draining = False

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The server-level nursery; returns after :meth:`close` once every supervisor is done."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await self._closed.wait()
        self._nursery = None
        self.finished.set()

    def close(self) -> None:
        self.draining = True
        self._closed.set()

    @property
    def ready(self) -> bool:
        return self._nursery is not None and not self.draining and len(self.calls) < self._max_calls

    async def wait_idle(self) -> None:
        """Return when no call is registered (every call's tasks have ended)."""
        await self._idle.wait()

    async def drain(self, grace_s: float) -> None:
        """Refuse new calls, give live ones ``grace_s``, then end them (SHUTDOWN) and hang up."""
        if not self.draining:
            self.draining = True
            logger.info("draining: %d live call(s), grace %.1fs", len(self.calls), grace_s)
        with trio.move_on_after(grace_s):
            await self._idle.wait()
        for record in list(self.calls.values()):
            logger.info("%s ending for shutdown", record.ids)
            record.request_end(EndReason.SHUTDOWN, "server shutting down")
        # Supervisors now hang up (each shielded with its own deadline); wait a bounded time.
        with trio.move_on_after(self._timeouts.hang_up_total_s + 5):
            await self._idle.wait()
        if self.calls:
            logger.warning("drain finished with %d call(s) still winding down", len(self.calls))

    # -- URLs --------------------------------------------------------------------------------

    def callback_url(self, token: str) -> str:
        return f"{self._base}/api/callbacks/{token}"

    def transport_url(self, token: str) -> str:
        """https→wss, http→ws, + ``/ws/{token}`` (contract, "Wire facts")."""
        if self._base.startswith("https://"):
            return "wss://" + self._base.removeprefix("https://") + f"/ws/{token}"
        return "ws://" + self._base.removeprefix("http://") + f"/ws/{token}"

    # -- admission ---------------------------------------------------------------------------

    def admit(self, incoming: IncomingCall) -> str:
        """Decide about one IncomingCall without waiting; answering continues in the background."""
        keys = (
            "id:" + _digest(incoming.event_id),
            "ctx:" + _digest(incoming.incoming_call_context),
        )
        if any(key in self._seen for key in keys):
            return Admission.DUPLICATE
        for key in keys:
            self._seen[key] = None
        while len(self._seen) > SEEN_EVENTS_MAX:
            self._seen.popitem(last=False)
        if self._nursery is None:
            return Admission.NOT_READY
        if self.draining:
            return Admission.DRAINING
        if len(self.calls) >= self._max_calls:
            return Admission.FULL
        token = secrets.token_urlsafe(32)
        pending_id = f"pending-{incoming.server_call_id[-12:] or incoming.event_id[:12]}"
        record = CallRecord(
            token=token,
            handle=CallHandle(CallIds(pending_id, incoming.correlation_id)),
            incoming=incoming,
        )
        # Registered BEFORE answer_call: the media socket may connect before it returns.
        self.calls[token] = record
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._nursery.start_soon(self._supervise, record)
        return Admission.ANSWERING

    # -- the media route and callbacks ---------------------------------------------------------

    def claim_media(self, token: str, call_connection_id: str) -> CallRecord | str:
        """Bind the media socket to its call, or say why it is refused (a log-ready reason).

        A token works once: a second socket for a live call is refused, and so is one for a call
        that has already been asked to end.
        """
        record = self.calls.get(token)
        if record is None:
            return "unknown or finished call token"
        if record.media_attached:
            return f"{record.ids}: token already used by a media socket"
        if record.end_requested.is_set():
            return f"{record.ids}: call is already ending"
        if not record.adopt_connection_id(call_connection_id):
            return f"{record.ids}: x-ms-call-connection-id {call_connection_id!r} does not match"
        record.media_attached = True
        record.media_connected.set()
        return record

    def on_callback(self, token: str, event: CallbackEvent) -> None:
        """Apply one Call Automation event to its call (acs-protocol.md §3); never to another."""
        record = self.calls.get(token)
        if record is None:
            logger.info(
                "callback %s for an unknown or ended call (call_connection_id=%s corr=%s): ignored",
                event.name,
                event.call_connection_id,
                event.correlation_id or "-",
            )
            return
        if not record.adopt_connection_id(event.call_connection_id):
            logger.warning(
                "%s callback %s names call_connection_id=%s: not this call, ignored",
                record.ids,
                event.name,
                event.call_connection_id,
            )
            return
        name = event.name
        if name == "CallDisconnected":
            logger.info("%s CallDisconnected", record.ids)
            record.call_disconnected.set()
            record.request_end(EndReason.CALL_DISCONNECTED, "CallDisconnected callback")
        elif name == "MediaStreamingFailed":
            # No dead air: without media the caller hears nothing, so end and hang up.
            update = event.data.get("mediaStreamingUpdate")
            logger.warning(
                "%s MediaStreamingFailed result=%s update=%s",
                record.ids,
                event.result_summary(),
                update,
            )
            record.request_end(
                EndReason.CANCELLED, f"MediaStreamingFailed {event.result_summary()}"
            )
        elif name.startswith("MediaStreaming") or name == "CallConnected":
            logger.info(
                "%s %s update=%s", record.ids, name, event.data.get("mediaStreamingUpdate", "-")
            )
        elif name == "ParticipantsUpdated":
            participants = event.data.get("participants")
            count = len(participants) if isinstance(participants, list) else "?"
            logger.info(
                "%s ParticipantsUpdated participants=%s seq=%s",
                record.ids,
                count,
                event.data.get("sequenceNumber"),
            )
        elif name.endswith("Failed"):
            logger.warning("%s %s result=%s", record.ids, name, event.result_summary())
        else:
            logger.info("%s %s (not acted on) result=%s", record.ids, name, event.result_summary())

    # -- one call's supervisor -----------------------------------------------------------------

    async def _supervise(self, record: CallRecord) -> None:
        """One call's whole life.  Nothing but Cancelled escapes: the nursery is every call's."""
        try:
            if await self._answer(record):
                await self._follow(record)
        except Exception:
            # A bug or an untranslated third-party error: it must cost this call only.
            logger.exception("%s supervisor failed", record.ids)
            record.request_end(EndReason.INTERNAL_ERROR, "supervisor failed")
            if not record.disconnected and record.call_connection_id:
                try:
                    await self._hang_up(record, "supervisor failed")
                except Exception:
                    logger.exception("%s hang-up after a supervisor failure failed", record.ids)
        finally:
            del self.calls[record.token]
            if not self.calls:
                self._idle.set()
            logger.debug("%s released", record.ids)

    async def _answer(self, record: CallRecord) -> bool:
        incoming = record.incoming
        logger.info(
            "%s answering caller=%s server_call_id=%s",
            record.ids,
            incoming.caller,
            incoming.server_call_id,
        )
        try:
            with trio.fail_after(self._timeouts.answer_s):
                answered = await self._rest.answer_call(
                    incoming.incoming_call_context,
                    callback_url=self.callback_url(record.token),
                    transport_url=self.transport_url(record.token),
                )
        except AcsRestError as exc:
            return self._answer_failed(record, f"answer_call failed: {exc}")
        except trio.TooSlowError:
            return self._answer_failed(
                record, f"answer_call timed out after {self._timeouts.answer_s:.1f}s"
            )
        if not record.adopt_connection_id(answered.call_connection_id):
            logger.warning(
                "%s answer returned call_connection_id=%s, media/callback said otherwise",
                record.ids,
                answered.call_connection_id,
            )
        logger.info("%s answered", record.ids)
        return True

    @staticmethod
    def _answer_failed(record: CallRecord, what: str) -> bool:
        """True if the call must be followed anyway (it is connected), else drop it.

        The media socket (or a callback) can arrive before ``answer_call`` returns; if it did,
        the call is up whatever the answer said, and dropping the record would leave a caller
        in dead air with nobody to act on its CallDisconnected or hang it up.
        """
        if record.media_attached or record.call_connection_id:
            logger.warning(
                "%s %s, but ACS already connected the call (media socket or callback): "
                "following it as answered",
                record.ids,
                what,
            )
            return True
        logger.warning("%s %s; call dropped", record.ids, what)
        return False

    async def _follow(self, record: CallRecord) -> None:
        with trio.move_on_after(self._timeouts.media_connect_s) as waited:
            await _wait_any(record.media_connected, record.end_requested)
        if record.media_connected.is_set():
            if await self._media_finished(record):
                why = await self._hang_up_reason(record)
            else:
                why = None if record.disconnected else "media handler did not finish"
        elif waited.cancelled_caught:
            record.request_end(EndReason.MEDIA_TIMEOUT, "media socket never connected")
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
        await _wait_any(record.media_done, record.handle.end_requested)
        if record.media_done.is_set():
            return True
        limit = self._timeouts.media_done_after_end_s
        with trio.move_on_after(limit):
            await record.media_done.wait()
        if not record.media_done.is_set():
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
        summary = record.summary
        if summary is None:
            return "media handler was cancelled before the call ended"
        if summary.end_reason is EndReason.CALLER_HUNG_UP:
            # The media socket closing is not proof the call is over: a network drop, a stream
            # stop or a send failure close it too, and hypercorn reports 1006 for every client
            # close.  CallDisconnected is ACS's word that it is (acs-protocol.md §3).
            # A shutdown during the wait hangs up at once.
            grace = self._timeouts.disconnect_grace_s
            with trio.move_on_after(grace):
                await _wait_any(record.call_disconnected, record.end_requested)
            if record.call_disconnected.is_set():  # (not .disconnected: mypy narrows it)
                return None
            return f"media socket closed and no CallDisconnected within {grace:.0f}s"
        if summary.end_reason.caller_gone:
            return None
        return f"call ended by us: {summary.end_reason.value} {summary.end_detail}".strip()

    async def _hang_up(self, record: CallRecord, why: str) -> None:
        """Never leave a caller in dead air: shielded, retried, within a total deadline."""
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


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def _wait_any(*events: trio.Event) -> None:
    """Return as soon as any of ``events`` is set."""
    async with trio.open_nursery() as nursery:

        async def wait_then_cancel(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in events:
            nursery.start_soon(wait_then_cancel, event)
