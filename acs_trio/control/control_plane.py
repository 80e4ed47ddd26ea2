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
from collections.abc import Callable

import trio

from ..call.lifecycle import CallHandle, CallIds, EndReason
from ..call.model_socket import ModelConnector
from ..call.predial import PreDial
from ..config import SEEN_EVENTS_MAX, ControlTimeouts
from ..wire.webhook import CallbackEvent, IncomingCall
from .acs_rest import AcsRest
from .call_actions import TRANSFER_EVENTS, RecordControl
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
        #: Live calls the plane does not own that share MAX_CONCURRENT_CALLS (browser calls).
        self.other_calls: Callable[[], int] = lambda: 0

    # -- lifecycle -------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
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
        return (
            self._nursery is not None
            and not self.draining
            and len(self.calls) + self.other_calls() < self._max_calls
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
        if len(self.calls) + self.other_calls() >= self._max_calls:
            return Admission.FULL
        token = secrets.token_urlsafe(32)
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
        try:
            async with trio.open_nursery() as nursery:
                if record.predial is not None:  # in parallel with answer_call
                    nursery.start_soon(record.predial.run)
                await self._supervisor.run(
                    record,
                    callback_url=self.callback_url(record.token),
                    transport_url=self.transport_url(record.token),
                )
                nursery.cancel_scope.cancel()  # the call is over: drop an unused early socket
        finally:
            del self.calls[record.token]
            del self._controls[record.token]
            if not self.calls:
                self._idle.set()
            logger.debug("%s released", record.ids)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
