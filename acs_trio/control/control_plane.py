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
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import trio

from ..call.lifecycle import CallHandle, CallIds, EndReason
from ..call.model_socket import ModelConnector
from ..call.predial import PreDial
from ..config import SEEN_EVENTS_MAX, ControlTimeouts
from ..errors import StateUnavailable
from ..wire.webhook import CallbackEvent, IncomingCall, decode_callbacks
from .acs_rest import AcsRest
from .call_actions import TRANSFER_EVENTS, RecordControl
from .call_store import CallStore, StoredCall
from .supervisor import CallRecord, CallSupervisor

__all__ = ["Admission", "CallRecord", "ControlPlane"]

logger = logging.getLogger(__name__)


# Duplicate detection remembers SEEN_EVENTS_MAX event ids / incomingCallContext hashes (oldest
# dropped): hashes, not the contexts, so the memory stays small whatever the webhook is sent.


class Admission(enum.StrEnum):
    """Outcomes of :meth:`ControlPlane.admit` (strings, so they go straight into log lines)."""

    ANSWERING = "answering"
    DUPLICATE = "duplicate"
    NOT_READY = "not_ready"
    DRAINING = "draining"
    FULL = "full"
    #: Shared state only: Redis cannot be reached, so no new call can be registered.
    UNAVAILABLE = "state_unavailable"


class ControlPlane:
    """Owns the server-level call nursery; all methods are safe to call from route handlers."""

    def __init__(
        self,
        rest: AcsRest,
        *,
        public_base_url: str,
        max_concurrent_calls: int,
        timeouts: ControlTimeouts | None = None,
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
        self.calls: dict[str, CallRecord] = {}
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
    def ready(self) -> bool:
        return (
            self._nursery is not None
            and not self.draining
            and len(self.calls) + self.other_calls() < self._max_calls
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
        """https→wss, http→ws, + ``/ws/{token}`` (contract, "Wire facts")."""
        if self._base.startswith("https://"):
            return "wss://" + self._base.removeprefix("https://") + f"/ws/{token}"
        return "ws://" + self._base.removeprefix("http://") + f"/ws/{token}"

    # -- admission ---------------------------------------------------------------------------

    def admit(self, incoming: IncomingCall) -> str:
        """Decide about one IncomingCall without waiting; answering continues in the background."""
        keys = _seen_keys(incoming)
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
        if len(self.calls) + self.other_calls() >= self._max_calls:
            return Admission.FULL
        return self._start(incoming, secrets.token_urlsafe(32))

    async def admit_anywhere(self, incoming: IncomingCall) -> str:
        """:meth:`admit`, with duplicates and the count decided cluster-wide when shared."""
        if self.store is None:
            return self.admit(incoming)
        if self._nursery is None:
            return Admission.NOT_READY
        if self.draining:
            return Admission.DRAINING
        if len(self.calls) + self.other_calls() >= self._max_calls:
            return Admission.FULL
        if not self.store.available:
            # Known down (logged once): answer 503 at once; the lease loop notices it is back.
            return Admission.UNAVAILABLE
        token = secrets.token_urlsafe(32)
        call = StoredCall(
            token,
            self.store.instance_id,
            correlation_id=incoming.correlation_id,
            server_call_id=incoming.server_call_id,
        )
        try:
            outcome = await self.store.admit(_seen_keys(incoming), call, self._cluster_max_calls)
        except StateUnavailable:
            return Admission.UNAVAILABLE
        if outcome != "answering":
            return Admission.DUPLICATE if outcome == "duplicate" else Admission.FULL
        if not self._accepting():  # closed or draining while Redis answered
            await self._release(token)
            return Admission.DRAINING
        return self._start(incoming, token)

    def _accepting(self) -> bool:
        return self._nursery is not None and not self.draining

    def _start(self, incoming: IncomingCall, token: str) -> str:
        assert self._nursery is not None
        pending_id = f"pending-{incoming.server_call_id[-12:] or incoming.event_id[:12]}"
        record = CallRecord(
            token=token,
            handle=CallHandle(CallIds(pending_id, incoming.correlation_id)),
            incoming=incoming,
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
        if record.stop_requested.is_set():
            return f"{record.ids}: call is already ending"
        if not record.adopt_connection_id(call_connection_id):
            return f"{record.ids}: x-ms-call-connection-id {call_connection_id!r} does not match"
        record.media_attached = True
        record.media_connected.set()
        return record

    def runs_here(self, token: str) -> bool:
        record = self.calls.get(token)
        return record is not None and not record.handed_over_to

    async def knows_token(self, token: str) -> bool:
        """A call token this instance or (shared) any instance holds; StateUnavailable if unsure."""
        if token in self.calls or self.store is None:
            return token in self.calls
        return await self.store.lookup(token) is not None

    async def claim_media_anywhere(self, token: str, call_connection_id: str) -> CallRecord | str:
        """:meth:`claim_media`; shared: a call answered elsewhere moves here (atomic in Redis)."""
        if self.store is None or self.runs_here(token):
            return self.claim_media(token, call_connection_id)
        if self._nursery is None:
            return "not ready"
        # While draining, a media socket that still reaches us (the balancer has not yet taken
        # this instance out) is served: refusing it would drop the call.  The drain waits for it.
        try:
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
            handle=CallHandle(CallIds(call_id, claimed.correlation_id)),
            incoming=incoming,
            call_connection_id=claimed.call_connection_id,
            adopted=True,
        )
        record.handle.conversation = self.store.conversation(token, history)
        control = RecordControl(record, self._rest, rest_timeout_s=self._timeouts.answer_s)
        record.handle.control = self._controls[token] = control
        record.media_attached = True
        record.media_connected.set()
        logger.info("%s taken over (%d earlier turn(s))", record.ids, len(history))
        self.calls[token] = record
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
            return False  # unknown (on_callback logs it) or being released here
        if await self.store.forward(call.owner, token, events):
            logger.info(
                "callbacks for call=%s forwarded to %s", call.call_connection_id, call.owner
            )
        else:
            logger.warning(
                "callbacks for call=%s: owner %s is not alive (crashed?); "
                "a survivor hangs the call up once its lease expires",
                call.call_connection_id,
                call.owner,
            )
        return True

    # -- hooks for the shared store (StoreHooks) -------------------------------------------------

    def owned_calls(self) -> Iterable[StoredCall]:
        assert self.store is not None
        for record in self.calls.values():
            if record.handed_over_to:
                continue
            state = "connected" if record.media_attached else "answering"
            yield StoredCall(
                record.token,
                self.store.instance_id,
                record.call_connection_id,
                record.ids.correlation_id,
                record.incoming.server_call_id,
                "ending" if record.stop_requested.is_set() else state,
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
                logger.warning("forwarded callback %s ignored: %s", item.event_id, item.reason)

    async def hang_up_orphan(self, call: StoredCall, why: str) -> None:
        incoming = IncomingCall("", "", call.correlation_id, call.server_call_id, "-")
        record = CallRecord(
            token=call.token,
            handle=CallHandle(CallIds(call.call_connection_id or "-", call.correlation_id)),
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

    def on_callback(self, token: str, event: CallbackEvent) -> None:
        """Apply one Call Automation event to its call (docs/protocols/acs.md §3); never to another."""
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
            logger.info("%s %s (not acted on) result=%s", record.ids, name, event.result_summary())

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
                    transport_url=self.transport_url(record.token),
                )
                # The call is over: drop an unused early socket and stop saving the conversation
                # (its record and conversation are released from Redis below).
                nursery.cancel_scope.cancel()
        finally:
            if self.calls.get(record.token) is record:  # (a call taken back has a new record)
                del self.calls[record.token]
                del self._controls[record.token]
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
