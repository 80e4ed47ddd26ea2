"""The server's live calls: admission, routing of media sockets and callbacks, drain.

Every answered call has one :class:`~acs_trio.control.supervisor.CallRecord`, found by its per-call URL
token (and checked against ``callConnectionId``), and one supervisor task
(:class:`~acs_trio.control.supervisor.CallSupervisor`) in the control plane's server-level nursery, which
removes the record when the call's life is over.  So "registry empty" means "every call's
supervisor has ended" (and every media handler too, unless one was stuck past
``media_done_after_end_s``, which is logged), which is what tests and the drain wait for.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import math
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import trio

from ..call.lifecycle import CallHandle, CallIds, EndReason
from ..call.model_socket import ModelConnector
from ..call.predial import PreDial
from ..config import MAX_PENDING_REJECTS, SEEN_EVENTS_MAX, ControlTimeouts
from ..errors import AcsRestError, StateUnavailable
from ..wire.webhook import CallbackEvent, IncomingCall, decode_callbacks
from .acs_rest import AcsRest
from .call_actions import TRANSFER_EVENTS, RecordControl
from .call_store import CallStore, StoredCall
from .log_safe import clip, id_chars
from .loop_lag import LoopLag
from .rate_limit import TokenBucket
from .supervisor import CallRecord, CallSupervisor

__all__ = ["Admission", "CallRecord", "ControlPlane"]

logger = logging.getLogger(__name__)


# Duplicate detection remembers SEEN_EVENTS_MAX event ids / incomingCallContext hashes (oldest
# dropped) of ADMITTED calls only: hashes, not the contexts, so the memory stays small whatever
# the webhook is sent, and a call refused while draining can be answered on redelivery.


class Admission(enum.StrEnum):
    """Outcomes of :meth:`ControlPlane.admit` (strings, so they go straight into log lines).

    FULL and OVERLOADED are turned away at once (``reject_call`` busy, or ``redirect_call`` to the
    overflow target): the caller gets a clear outcome.  NOT_READY, DRAINING and RATE_LIMITED are
    answered 503 by the route, so Event Grid redelivers (maybe to another instance).
    """

    ANSWERING = "answering"
    DUPLICATE = "duplicate"
    NOT_READY = "not_ready"
    DRAINING = "draining"
    FULL = "full"
    OVERLOADED = "overloaded"  # the event loop lags: one more call would hurt every call
    RATE_LIMITED = "rate_limited"
    #: Shared state only: Redis cannot be reached, so no new call can be registered.
    UNAVAILABLE = "state_unavailable"

    @property
    def redeliver(self) -> bool:
        """True if Event Grid should deliver this event again (the route answers 503)."""
        return self in {
            Admission.NOT_READY,
            Admission.DRAINING,
            Admission.RATE_LIMITED,
            Admission.UNAVAILABLE,
        }


class ControlPlane:
    """Owns the server-level call nursery; all methods are safe to call from route handlers."""

    def __init__(
        self,
        rest: AcsRest,
        *,
        public_base_url: str,
        max_concurrent_calls: int,
        timeouts: ControlTimeouts | None = None,
        answer_bucket: TokenBucket | None = None,
        loop_lag: LoopLag | None = None,
        max_loop_lag_s: float = math.inf,
        overflow_target: str = "",
        enable_dtmf_tones: bool = True,
        connect_model: ModelConnector | None = None,
        store: CallStore | None = None,
        cluster_max_calls: int | None = None,
    ) -> None:
        self._rest = rest
        #: Early dial (issue 10): with a connector, each admitted call dials its model at once.
        self._connect_model = connect_model
        self._base = public_base_url.rstrip("/")
        self._max_calls = max_concurrent_calls
        self._timeouts = ControlTimeouts() if timeouts is None else timeouts
        self._supervisor = CallSupervisor(rest, self._timeouts, enable_dtmf_tones=enable_dtmf_tones)
        self._controls: dict[str, RecordControl] = {}
        self._bucket = answer_bucket
        self._loop_lag = loop_lag
        self._max_loop_lag_s = max_loop_lag_s
        self._overflow_target = overflow_target
        self._pending_rejects = 0
        #: Every record by its callback token (live calls and answer-failed tombstones).
        self.calls: dict[str, CallRecord] = {}
        #: media token -> callback token.
        self._media_tokens: dict[str, str] = {}
        #: Digests of the callback tokens of recently ended calls (late callbacks get 200, not 404).
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._nursery: trio.Nursery | None = None
        self._idle = trio.Event()
        self._idle.set()
        self._closed = trio.Event()
        #: Set when :meth:`run` has returned (after :meth:`close`, every supervisor done).
        self.finished = trio.Event()
        self.draining = False
        #: Shared state (``REDIS_URL``); ``None``: one process, everything in the dicts above.
        self.store = store
        self._cluster_max_calls = cluster_max_calls
        #: Live calls the plane does not own that share MAX_CONCURRENT_CALLS (browser calls).
        self.other_calls: Callable[[], int] = lambda: 0

    # -- lifecycle -------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The server-level nursery; returns after :meth:`close` once every supervisor is done."""
        async with trio.open_nursery() as shared:
            if self.store is not None:
                # Lease, inbox and reaper run until the last supervisor here has ended.
                await shared.start(self.store.run, self)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await self._closed.wait()
            shared.cancel_scope.cancel()
        self._nursery = None
        self.finished.set()

    def close(self) -> None:
        self.draining = True
        self._closed.set()

    @property
    def live_calls(self) -> int:
        """Calls that count against the limit (answer-failed tombstones do not)."""
        return sum(not record.answer_failed for record in self.calls.values())

    @property
    def overloaded(self) -> bool:
        return self._loop_lag is not None and self._loop_lag.lag_s > self._max_loop_lag_s

    @property
    def ready(self) -> bool:
        return (
            self._nursery is not None
            and not self.draining
            and self.live_calls + self.other_calls() < self._max_calls
            and not self.overloaded
            and (self.store is None or self.store.available)
        )

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
            record.end(EndReason.SHUTDOWN, "server shutting down")
        # Supervisors now hang up (each shielded with its own deadline); wait a bounded time.
        with trio.move_on_after(self._timeouts.hang_up_total_s + 5):
            await self._idle.wait()
        if self.calls:
            logger.warning("drain finished with %d call(s) still winding down", len(self.calls))

    # -- URLs --------------------------------------------------------------------------------

    def callback_url(self, token: str) -> str:
        return f"{self._base}/api/callbacks/{token}"

    def transport_url(self, token: str) -> str:
        """https→wss, http→ws, + ``/ws/{token}`` (contract, "Wire facts"); the *media* token."""
        if self._base.startswith("https://"):
            return "wss://" + self._base.removeprefix("https://") + f"/ws/{token}"
        return "ws://" + self._base.removeprefix("http://") + f"/ws/{token}"

    # -- admission ---------------------------------------------------------------------------

    def admit(self, incoming: IncomingCall) -> Admission:
        """Decide about one IncomingCall without waiting; answering continues in the background."""
        keys = _seen_keys(incoming)
        if any(key in self._seen for key in keys):
            return Admission.DUPLICATE
        nursery = self._nursery
        if nursery is None:
            return Admission.NOT_READY
        if self.draining:
            return Admission.DRAINING
        if self.live_calls + self.other_calls() >= self._max_calls:
            self._turn_away(nursery, incoming, Admission.FULL)
            return Admission.FULL
        if self.overloaded:
            self._turn_away(nursery, incoming, Admission.OVERLOADED)
            return Admission.OVERLOADED
        if self._bucket is not None and not self._bucket.try_take():
            return Admission.RATE_LIMITED
        # Only admitted calls are remembered: a redelivery of a refused one must get through.
        for key in keys:
            self._seen[key] = None
        while len(self._seen) > SEEN_EVENTS_MAX:
            self._seen.popitem(last=False)
        return self._start(nursery, incoming, secrets.token_urlsafe(32))

    async def admit_anywhere(self, incoming: IncomingCall) -> Admission:
        """:meth:`admit`, with duplicates and the count decided cluster-wide when shared.

        The same gates as :meth:`admit` (full or overloaded: turned away; over the answer rate:
        503), plus Redis unreachable: 503.  A caller is only turned away once Redis has said the
        delivery is not a duplicate of a call another instance answered.
        """
        store = self.store
        if store is None:
            return self.admit(incoming)
        keys = _seen_keys(incoming)
        if any(key in self._seen for key in keys):
            return Admission.DUPLICATE
        nursery = self._nursery
        if nursery is None:
            return Admission.NOT_READY
        if self.draining:
            return Admission.DRAINING
        if not store.available:
            # Known down (logged once): answer 503 at once; the lease loop notices it is back.
            return Admission.UNAVAILABLE
        turn_away: Admission | None = None
        if self.live_calls + self.other_calls() >= self._max_calls:
            turn_away = Admission.FULL
        elif self.overloaded:
            turn_away = Admission.OVERLOADED
        elif self._bucket is not None and not self._bucket.try_take():
            return Admission.RATE_LIMITED
        token, media_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        call = StoredCall(
            token,
            store.instance_id,
            correlation_id=incoming.correlation_id,
            server_call_id=incoming.server_call_id,
            media_token=media_token,
        )
        # Turned away here: Redis still decides "duplicate" first, registering nothing (-1).
        max_calls = -1 if turn_away is not None else self._cluster_max_calls
        try:
            outcome = await store.admit(keys, call, max_calls)
        except StateUnavailable:
            return Admission.UNAVAILABLE
        if outcome == "duplicate":
            return Admission.DUPLICATE
        if self._nursery is None or self.draining:  # closed or draining while Redis answered
            if outcome == "answering":
                await self._release(token)
            return Admission.DRAINING
        if outcome != "answering":
            why = turn_away or Admission.FULL  # else the cluster is full
            self._turn_away(self._nursery, incoming, why)
            return why
        for key in keys:
            self._seen[key] = None
        while len(self._seen) > SEEN_EVENTS_MAX:
            self._seen.popitem(last=False)
        return self._start(self._nursery, incoming, token, media_token)

    def _start(
        self,
        nursery: trio.Nursery,
        incoming: IncomingCall,
        token: str,
        media_token: str | None = None,
    ) -> Admission:
        media_token = media_token or secrets.token_urlsafe(32)
        pending_id = f"pending-{id_chars(incoming.server_call_id[-12:] or incoming.event_id[:12])}"
        record = CallRecord(
            token=token,
            # On every log line of the call: only id characters (the webhook's input).
            handle=CallHandle(CallIds(pending_id, id_chars(incoming.correlation_id))),
            incoming=incoming,
            media_token=media_token,
        )
        record.handle.caller = incoming.caller
        control = RecordControl(record, self._rest, rest_timeout_s=self._timeouts.answer_s)
        record.handle.control = self._controls[token] = control
        if self._connect_model is not None:
            record.predial = PreDial(self._connect_model)
        if self.store is not None:
            record.handle.conversation = self.store.conversation(token, ())
        # Registered BEFORE answer_call: the media socket may connect before it returns.
        self.calls[token] = record
        self._media_tokens[media_token] = token
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        nursery.start_soon(self._supervise, record)
        return Admission.ANSWERING

    def _turn_away(self, nursery: trio.Nursery, incoming: IncomingCall, why: Admission) -> None:
        """No caller left ringing: reject as busy, or redirect to the overflow target."""
        if self._pending_rejects >= MAX_PENDING_REJECTS:
            logger.warning("%s: %d rejections already in flight; this one is skipped", why,
                           self._pending_rejects)  # fmt: skip
            return
        self._pending_rejects += 1
        nursery.start_soon(self._reject, incoming, why)

    async def _reject(self, incoming: IncomingCall, why: Admission) -> None:
        target = self._overflow_target
        action = f"redirect to {clip(target)}" if target else "reject (busy)"
        try:
            with trio.fail_after(self._timeouts.answer_s):
                if target:
                    await self._rest.redirect_call(incoming.incoming_call_context, target)
                else:
                    await self._rest.reject_call(incoming.incoming_call_context)
        except (AcsRestError, trio.TooSlowError) as exc:
            logger.warning("%s call event=%s: %s failed: %r", why, clip(incoming.event_id),
                           action, exc)  # fmt: skip
        else:
            logger.info("%s call event=%s: %s", why, clip(incoming.event_id), action)
        finally:
            self._pending_rejects -= 1

    # -- the media route and callbacks ---------------------------------------------------------

    async def knows_media_token(self, media_token: str) -> bool:
        """A media token this instance or (shared) any instance holds; StateUnavailable if unsure."""
        if media_token in self._media_tokens or self.store is None:
            return media_token in self._media_tokens
        return await self.store.lookup_media(media_token) is not None

    def knows_token(self, token: str) -> bool:
        return token in self.calls

    def recently_ended(self, token: str) -> bool:
        """True for the callback token of one of the last SEEN_EVENTS_MAX ended calls."""
        return _digest(token) in self._ended

    def claim_media(self, media_token: str, call_connection_id: str) -> CallRecord | str:
        """Bind the media socket to its call, or say why it is refused (a log-ready reason).

        A token serves one live socket: a second socket while the first is open is refused, and
        so is one for a call that has already been asked to end.  After the socket has closed
        from ACS's side, ACS may re-establish it within the disconnect grace (same
        ``x-ms-call-connection-id``, a fresh JWT checked by the route): the call resumes.  (One
        that arrives while the old socket still looks open takes over in
        :meth:`claim_media_anywhere`, which ends the old one first.)  A
        socket for an answer that failed or timed out is refused and makes the supervisor hang
        the call up (ACS did answer it after all).
        """
        record = self.calls.get(self._media_tokens.get(media_token, ""))
        if record is None:
            return "unknown or finished call token"
        if record.answer_failed:
            record.adopt_connection_id(call_connection_id)
            record.late_connection.set()
            return f"{record.ids}: answer_call had failed; hanging the call up"
        if record.stop_requested.is_set():
            return f"{record.ids}: call is already ending"
        if record.media_attached:
            return self._resume_media(record, call_connection_id)
        if not record.adopt_connection_id(call_connection_id):
            return (
                f"{record.ids}: x-ms-call-connection-id {clip(call_connection_id)} does not match"
            )
        record.media_attached = True
        record.media_connected.set()
        return record

    @staticmethod
    def _resume_media(record: CallRecord, call_connection_id: str) -> CallRecord | str:
        may_resume = record.resume_window_open or record.taking_over
        if not (may_resume and record.media_done.is_set()):
            return f"{record.ids}: token already used by a media socket"
        if not call_connection_id or call_connection_id != record.call_connection_id:
            return (
                f"{record.ids}: re-established media socket names x-ms-call-connection-id "
                f"{clip(call_connection_id)}, not this call's"
            )
        record.media_done = trio.Event()
        record.summary = None
        record.handle.restart()
        record.taking_over = False
        record.media_resumed.set()
        return record

    @staticmethod
    def _may_take_over(record: CallRecord, call_connection_id: str) -> bool:
        """A socket for a live call whose old socket still runs, naming the adopted id."""
        return (
            record.media_attached
            and not record.answer_failed
            and not record.stop_requested.is_set()
            and record.handle.end_request is None
            and not record.handed_over_to
            and not record.taking_over
            and not record.media_done.is_set()
            and bool(record.call_connection_id)
            and call_connection_id == record.call_connection_id
        )

    async def _take_over_media(self, record: CallRecord) -> str | None:
        """End the call's old media socket for a re-established one; a reason if it would not.

        After a network drop with no close seen, the old socket lingers until a read deadline
        or TCP_USER_TIMEOUT, while ACS reconnects at once.  The old socket's call is asked to end
        (it closes its ACS side), then cancelled; each step gets ``media_takeover_s``.  Only
        once its handler has finished does the new socket resume the call: one live socket.
        """
        limit = self._timeouts.media_takeover_s
        done = record.media_done
        logger.warning(
            "%s media socket re-established while the old one is still open: closing the old one",
            record.ids,
        )
        record.handle.end(EndReason.CANCELLED, "media socket replaced by a re-established one")
        with trio.move_on_after(limit):
            await done.wait()
        scope = record.media_scope
        if not done.is_set() and scope is not None:
            logger.warning("%s old media socket still open after %.1fs: cancelled", record.ids,
                           limit)  # fmt: skip
            scope.cancel()
            with trio.move_on_after(limit):
                await done.wait()
        if not done.is_set():
            return f"{record.ids}: the old media socket did not finish; new one refused"
        return None

    def runs_here(self, token: str) -> bool:
        record = self.calls.get(token)
        return record is not None and not record.handed_over_to

    async def claim_media_anywhere(
        self, media_token: str, call_connection_id: str
    ) -> CallRecord | str:
        """:meth:`claim_media`; shared: a call answered elsewhere moves here (atomic in Redis).

        A socket re-established to the instance that runs the call resumes it there
        (:meth:`claim_media`); one that lands on another instance takes the call over.
        """
        local = self._media_tokens.get(media_token)
        if self.store is None or (local is not None and self.runs_here(local)):
            record = self.calls.get(local or "")
            if record is None or not self._may_take_over(record, call_connection_id):
                return self.claim_media(media_token, call_connection_id)
            record.taking_over = True
            try:
                refused = await self._take_over_media(record)
                # Synchronous from here: a stop or CallDisconnected meanwhile is refused.
                return refused or self.claim_media(media_token, call_connection_id)
            finally:
                record.taking_over = False
        if self._nursery is None:
            return "not ready"
        # While draining, a media socket that still reaches us (the balancer has not yet taken
        # this instance out) is served: refusing it would drop the call.  The drain waits for it.
        try:
            token = await self.store.lookup_media(media_token)
            if token is None:
                return "unknown or finished call token"
            claimed = await self.store.claim(token, call_connection_id)
        except StateUnavailable:
            return "shared state unavailable: cannot claim the call"
        if isinstance(claimed, str):
            return claimed
        try:
            history = await self.store.history(token)
        except StateUnavailable:
            history = []  # the call goes on without its context rather than not at all
        incoming = IncomingCall(
            event_id="",
            incoming_call_context="",
            correlation_id=claimed.correlation_id,
            server_call_id=claimed.server_call_id,
            caller="-",
        )
        call_id = claimed.call_connection_id or f"pending-{token[:8]}"
        record = CallRecord(
            token=token,
            handle=CallHandle(CallIds(id_chars(call_id), id_chars(claimed.correlation_id))),
            incoming=incoming,
            call_connection_id=claimed.call_connection_id,
            adopted=True,
            media_token=media_token,
        )
        record.handle.conversation = self.store.conversation(token, history)
        control = RecordControl(record, self._rest, rest_timeout_s=self._timeouts.answer_s)
        record.handle.control = self._controls[token] = control
        record.media_attached = True
        record.media_connected.set()
        logger.info("%s taken over (%d earlier turn(s))", record.ids, len(history))
        self.calls[token] = record
        self._media_tokens[media_token] = token
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._nursery.start_soon(self._supervise, record)
        return record

    async def route_callbacks(self, token: str, events: list[Any]) -> bool:
        """Shared: forward callbacks for a call run elsewhere to its owner; True if done so.

        False means "apply them here" (our call, or no shared state).  Raises
        :class:`StateUnavailable` when Redis cannot say who owns the call.
        """
        if self.store is None or self.runs_here(token):
            return False
        call = await self.store.lookup(token)
        if call is None or call.owner == self.store.instance_id:
            return False  # unknown or recently ended (on_callback answers), or released here
        if await self.store.forward(call.owner, token, events):
            logger.info(
                "callbacks for call=%s forwarded to %s",
                id_chars(call.call_connection_id),
                call.owner,
            )
        else:
            logger.warning(
                "callbacks for call=%s: owner %s is not alive (crashed?); "
                "a survivor hangs the call up once its lease expires",
                id_chars(call.call_connection_id),
                call.owner,
            )
        return True

    # -- hooks for the shared store (StoreHooks) -------------------------------------------------

    def owned_calls(self) -> Iterable[StoredCall]:
        for token in list(self.calls):
            call = self.owned_call(token)
            if call is not None:
                yield call

    def owned_call(self, token: str) -> StoredCall | None:
        assert self.store is not None
        record = self.calls.get(token)
        if record is None or record.handed_over_to:
            return None
        state = "connected" if record.media_attached else "answering"
        return StoredCall(
            record.token,
            self.store.instance_id,
            record.call_connection_id,
            record.ids.correlation_id,
            record.incoming.server_call_id,
            "ending" if record.stop_requested.is_set() else state,
            record.media_token,
        )

    def call_taken(self, token: str, new_owner: str) -> None:
        record = self.calls.get(token)
        if record is None or record.handed_over_to or self.store is None:
            return
        if new_owner == self.store.instance_id:
            return
        record.handed_over_to = new_owner
        logger.info("%s taken over by instance %s: ending it here", record.ids, new_owner)
        record.end(EndReason.CANCELLED, f"taken over by {new_owner}")

    def deliver_callbacks(self, token: str, events: list[Any]) -> None:
        for item in decode_callbacks(events):
            if isinstance(item, CallbackEvent):
                self.on_callback(token, item)
            else:
                logger.warning(
                    "forwarded callback %s ignored: %s", clip(item.event_id), clip(item.reason)
                )

    async def hang_up_orphan(self, call: StoredCall, why: str) -> None:
        incoming = IncomingCall("", "", call.correlation_id, call.server_call_id, "-")
        record = CallRecord(
            token=call.token,
            handle=CallHandle(
                CallIds(id_chars(call.call_connection_id or "-"), id_chars(call.correlation_id))
            ),
            incoming=incoming,
            call_connection_id=call.call_connection_id,
        )
        await self._supervisor.hang_up(record, why)

    async def _release(self, token: str) -> None:
        if self.store is None:
            return
        with trio.move_on_after(self._timeouts.hang_up_s, shield=True):
            try:
                await self.store.release(token)
            except StateUnavailable:
                logger.warning("call token %s… not released in Redis (unreachable)", token[:4])

    def on_callback(self, token: str, event: CallbackEvent) -> bool:
        """Apply one Call Automation event to its call (docs/protocols/acs.md §3); never to another.

        False if ``token`` names no call we know (the route answers 404).
        """
        record = self.calls.get(token)
        if record is None and self.recently_ended(token):
            # A late event for a call that just ended (e.g. CallDisconnected after a transfer).
            logger.info("callback %s for an ended call: ignored", clip(event.name))
            return True
        if record is None:
            logger.warning(
                "callback %s for an unknown call (call_connection_id=%s corr=%s): 404",
                clip(event.name),
                clip(event.call_connection_id),
                clip(event.correlation_id or "-"),
            )
            return False
        if not record.adopt_connection_id(event.call_connection_id):
            logger.warning(
                "%s callback %s names call_connection_id=%s: not this call, ignored",
                record.ids,
                clip(event.name),
                clip(event.call_connection_id),
            )
            return True
        if record.answer_failed:
            # ACS answered after all (a JWT-valid callback carries its connection id): hang up.
            logger.warning("%s %s after a failed answer: hanging up", record.ids, clip(event.name))
            record.late_connection.set()
            if event.name == "CallDisconnected":
                record.call_disconnected.set()
            return True
        name = event.name
        if name == "CallDisconnected":
            logger.info("%s CallDisconnected", record.ids)
            record.call_disconnected.set()
            record.end(EndReason.CALL_DISCONNECTED, "CallDisconnected callback")
        elif name == "MediaStreamingFailed":
            # No dead air: without media the caller hears nothing, so end and hang up.
            update = event.data.get("mediaStreamingUpdate")
            logger.warning(
                "%s MediaStreamingFailed result=%s update=%s",
                record.ids,
                event.result_summary(),
                update,
            )
            record.end(EndReason.CANCELLED, f"MediaStreamingFailed {event.result_summary()}")
        elif name in TRANSFER_EVENTS:
            self._controls[token].on_transfer_event(event)
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
            logger.info(
                "%s %s (not acted on) result=%s", record.ids, clip(name), event.result_summary()
            )
        return True

    # -- one call's supervisor -----------------------------------------------------------------

    async def _supervise(self, record: CallRecord) -> None:
        conversation = record.handle.conversation
        try:
            async with trio.open_nursery() as nursery:
                if record.predial is not None:  # in parallel with answer_call
                    nursery.start_soon(record.predial.run)
                if self.store is not None and conversation is not None:
                    nursery.start_soon(self.store.flush_conversation, conversation)
                await self._supervisor.run(
                    record,
                    callback_url=self.callback_url(record.token),
                    transport_url=self.transport_url(record.media_token),
                )
                # The call is over: drop an unused early socket and stop saving the conversation
                # (its record and conversation are released from Redis below).
                nursery.cancel_scope.cancel()
        finally:
            if self.calls.get(record.token) is record:  # (a call taken back has a new record)
                del self.calls[record.token]
                del self._controls[record.token]
                if self._media_tokens.get(record.media_token) == record.token:
                    del self._media_tokens[record.media_token]
                self._ended[_digest(record.token)] = None
                while len(self._ended) > SEEN_EVENTS_MAX:
                    self._ended.popitem(last=False)
            if not record.handed_over_to:
                with trio.move_on_after(self._timeouts.hang_up_s, shield=True):
                    await self._release(record.token)
            if not self.calls:
                self._idle.set()
            logger.debug("%s released", record.ids)


def _seen_keys(incoming: IncomingCall) -> tuple[str, str]:
    return ("id:" + _digest(incoming.event_id), "ctx:" + _digest(incoming.incoming_call_context))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
