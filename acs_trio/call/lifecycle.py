"""How a call is named, told to end, and summarised.

These types are the contract between the media bridge (:mod:`acs_trio.call.bridge`) and the control
plane (:mod:`acs_trio.control.app`): the control plane creates a :class:`CallHandle` when it answers a call,
hands it to :func:`~acs_trio.call.bridge.run_call`, and may later ``end()`` it (``CallDisconnected``,
shutdown).  ``run_call`` returns a :class:`CallSummary` whose :class:`EndReason` tells the control
plane whether it must still hang up the ACS call so the caller is not left in dead air.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from .actions import CallControl
from .conversation_store import ConversationStore
from .observer import NULL_OBSERVER, CallObserver

__all__ = ["CallHandle", "CallIds", "CallSummary", "EndReason"]


class EndReason(enum.Enum):
    """Why a call ended.  The first cause recorded wins; later ones are ignored."""

    CALLER_HUNG_UP = "caller_hung_up"  # ACS closed the media socket
    CALL_DISCONNECTED = "call_disconnected"  # ACS said CallDisconnected on the callback URL
    MODEL_CONNECT_FAILED = "model_connect_failed"
    MODEL_CLOSED = "model_closed"
    MODEL_ERROR = "model_error"  # a fatal ``error`` event
    MAX_DURATION = "max_duration"
    IDLE_TIMEOUT = "idle_timeout"  # nobody spoke for limits.idle_timeout_s
    MEDIA_TIMEOUT = "media_timeout"  # ACS stopped sending anything
    ACS_PROTOCOL_ERROR = "acs_protocol_error"  # too many undecodable media messages
    SHUTDOWN = "shutdown"
    CANCELLED = "cancelled"  # the control plane ended it for another reason
    INTERNAL_ERROR = "internal_error"  # a bug: logged with its traceback
    AGENT_HUNG_UP = "agent_hung_up"  # the model called end_call; its goodbye had played
    TRANSFERRED = "transferred"  # CallTransferAccepted: ACS moved the caller; our leg is gone

    @property
    def caller_gone(self) -> bool:
        """True when ACS already ended the call, so hanging up would be pointless."""
        # After a transfer, hanging up "for everyone" would drop the caller from the new party.
        return self in {
            EndReason.CALLER_HUNG_UP,
            EndReason.CALL_DISCONNECTED,
            EndReason.TRANSFERRED,
        }

    @property
    def media_close_code(self) -> int:
        """Close code for the ACS media socket when *we* end the call (RFC 6455 §7.4.1)."""
        if self is EndReason.SHUTDOWN:
            return 1001  # going away
        if self is EndReason.INTERNAL_ERROR:
            return 1011  # unexpected condition
        if self is EndReason.ACS_PROTOCOL_ERROR:
            return 1007  # inconsistent data
        return 1000


@dataclass(frozen=True)
class CallIds:
    """Identifiers put on every log line of a call."""

    call_id: str
    correlation_id: str = ""

    def __str__(self) -> str:
        return f"call={self.call_id} corr={self.correlation_id or '-'}"


class CallHandle:
    """A control-plane grip on one running call.

    ``end()`` may be called before the call has started (the media socket can connect after
    ``CallDisconnected`` has already arrived); the request is remembered and applied at start.
    """

    def __init__(self, ids: CallIds) -> None:
        self.ids = ids
        self._on_cancel: Callable[[], None] | None = None
        self._end_request: tuple[EndReason, str] | None = None
        #: Set at the first :meth:`end`, whoever called it (the call itself or the control plane).
        self.end_requested = trio.Event()
        #: Set when ``run_call`` has returned: every task of the call has ended.
        self.finished = trio.Event()
        #: Where the call reports metrics, recordings and transcripts (set by the control plane
        #: before ``run_call``; see :mod:`acs_trio.call.observer`).
        self.observer: CallObserver = NULL_OBSERVER
        #: trio time of the first :meth:`end` (teardown time is measured from it).
        self.end_requested_at: float | None = None
        #: The caller's number (or raw id) from IncomingCall; tools see it in their context.
        self.caller = ""
        #: How the call asks the control plane for call actions (transfer); None without one.
        self.control: CallControl | None = None
        #: Where the conversation is kept for a resume elsewhere (``None``: nowhere, one process).
        self.conversation: ConversationStore | None = None

    def end(self, reason: EndReason, detail: str = "") -> None:
        """Ask the call to end for ``reason``.  Safe to call at any time, from any task.

        The first reason given wins; later calls are no-ops.
        """
        if self._end_request is not None:
            return
        self._end_request = (reason, detail)
        self.end_requested_at = trio.current_time()
        self.end_requested.set()
        if self._on_cancel is not None:
            self._on_cancel()

    @property
    def end_request(self) -> tuple[EndReason, str] | None:
        """The first reason given to :meth:`end`, if any."""
        return self._end_request

    def restart(self) -> None:
        """Re-arm a finished call for another ``run_call`` (its media socket was re-established).

        Only once the previous ``run_call`` has returned (the control plane checks that).  The ids
        stay; the end request, its event and ``finished`` start afresh.
        """
        self._on_cancel = None
        self._end_request = None
        self.end_requested = trio.Event()
        self.finished = trio.Event()

    def bind(self, on_cancel: Callable[[], None]) -> None:
        """Called by ``run_call`` when the call starts; not for the control plane.

        ``on_cancel`` runs once, at the first :meth:`end` (at once if that came earlier).
        """
        self._on_cancel = on_cancel
        if self._end_request is not None:
            on_cancel()


@dataclass
class CallSummary:
    """What happened on one call; logged as one line when the call ends."""

    ids: CallIds
    started_at: float
    ended_at: float = 0.0
    end_reason: EndReason = EndReason.INTERNAL_ERROR
    end_detail: str = ""
    frames_in: int = 0
    frames_out: int = 0
    silent_frames_in: int = 0
    barge_ins: int = 0
    turns: int = 0
    #: Time to first audio per turn, ms: model speech_stopped -> first frame written to ACS.
    ttfa_ms: list[float] = field(default_factory=list)
    #: Greeting: model session ready -> first greeting frame written to ACS, ms.
    greeting_ttfa_ms: float | None = None
    #: speech_started received -> StopAudio written to ACS, ms.
    barge_in_latency_ms: list[float] = field(default_factory=list)
    #: ``audio_end_ms`` of each truncate sent.
    truncated_at_ms: list[int] = field(default_factory=list)
    bad_acs_messages: int = 0
    bad_model_messages: int = 0
    unknown_kinds: dict[str, int] = field(default_factory=dict)
    model_errors: int = 0
    #: Times a bounded channel was full and its producer had to wait (policy: wait, never drop).
    inbound_waits: int = 0
    outbound_waits: int = 0
    #: Agent audio frames discarded because the caller barged in (never sent to ACS).
    frames_dropped_barge_in: int = 0
    sample_rate_hz: int = 24000
    # --- the model session (issue 10) ---
    #: ``response.done`` with status failed or incomplete.
    failed_responses: int = 0
    #: Sessions re-opened after a drop or failure, and sessions replaced before their expiry.
    model_reconnects: int = 0
    session_recycles: int = 0
    #: Per re-opened session: ms from losing the old one to the new one being ready.
    model_gap_ms: list[float] = field(default_factory=list)
    #: Caller audio dropped while no session was open (policy: keep the newest gap_audio_ms).
    gap_audio_dropped_ms: int = 0
    #: Items of cut responses deleted because nothing of them was heard.
    items_deleted: int = 0
    #: Function calls from the model, and how many went back as errors / timed out.
    tool_calls: int = 0
    tool_errors: int = 0
    tool_timeouts: int = 0
    #: Keypad entries sent to the model (each one text item).
    dtmf_entries: int = 0

    @property
    def duration_s(self) -> float:
        return self.ended_at - self.started_at

    def log_fields(self) -> str:
        def ms(values: list[float]) -> str:
            return "[" + ",".join(f"{v:.0f}" for v in values) + "]"

        greeting = "-" if self.greeting_ttfa_ms is None else f"{self.greeting_ttfa_ms:.0f}"
        unknown = ",".join(f"{k}:{v}" for k, v in sorted(self.unknown_kinds.items())) or "-"
        return (
            f"call_id={self.ids.call_id} correlation_id={self.ids.correlation_id or '-'} "
            f"duration_s={self.duration_s:.3f} end_reason={self.end_reason.value} "
            f"detail={self.end_detail!r} frames_in={self.frames_in} "
            f"silent_in={self.silent_frames_in} frames_out={self.frames_out} "
            f"barge_ins={self.barge_ins} turns={self.turns} greeting_ttfa_ms={greeting} "
            f"ttfa_ms={ms(self.ttfa_ms)} barge_in_ms={ms(self.barge_in_latency_ms)} "
            f"truncated_at_ms={self.truncated_at_ms} dropped_frames={self.frames_dropped_barge_in} "
            f"inbound_waits={self.inbound_waits} outbound_waits={self.outbound_waits} "
            f"bad_acs={self.bad_acs_messages} bad_model={self.bad_model_messages} "
            f"model_errors={self.model_errors} unknown_kinds={unknown} "
            f"rate_hz={self.sample_rate_hz} failed_responses={self.failed_responses} "
            f"model_reconnects={self.model_reconnects} recycles={self.session_recycles} "
            f"model_gap_ms={ms(self.model_gap_ms)} gap_audio_dropped_ms={self.gap_audio_dropped_ms} "
            f"items_deleted={self.items_deleted} tool_calls={self.tool_calls} "
            f"tool_errors={self.tool_errors} tool_timeouts={self.tool_timeouts} "
            f"dtmf_entries={self.dtmf_entries}"
        )

    def log_extra(self) -> dict[str, object]:
        """The summary as flat keys for structured (JSON) log lines; no raw clock readings."""
        return {
            "call_id": self.ids.call_id,
            "correlation_id": self.ids.correlation_id,
            "end_reason": self.end_reason.value,
            "end_detail": self.end_detail,
            "duration_s": round(self.duration_s, 3),
            "frames_in": self.frames_in,
            "silent_frames_in": self.silent_frames_in,
            "frames_out": self.frames_out,
            "barge_ins": self.barge_ins,
            "turns": self.turns,
            "greeting_ttfa_ms": (
                None if self.greeting_ttfa_ms is None else round(self.greeting_ttfa_ms, 1)
            ),
            "ttfa_ms": [round(v, 1) for v in self.ttfa_ms],
            "barge_in_latency_ms": [round(v, 1) for v in self.barge_in_latency_ms],
            "truncated_at_ms": list(self.truncated_at_ms),
            "frames_dropped_barge_in": self.frames_dropped_barge_in,
            "inbound_waits": self.inbound_waits,
            "outbound_waits": self.outbound_waits,
            "bad_acs_messages": self.bad_acs_messages,
            "bad_model_messages": self.bad_model_messages,
            "model_errors": self.model_errors,
            "unknown_kinds": dict(self.unknown_kinds),
            "sample_rate_hz": self.sample_rate_hz,
        }
