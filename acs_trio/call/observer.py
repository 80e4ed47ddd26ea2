"""What a call reports to the outside world while it runs: the :class:`CallObserver` seam.

The bridge and the playout call these hooks at the few points where something an operator cares
about happens (a frame in, a frame out, StopAudio, a time to first audio, a transcript line, the
end).  It is the call's only reporting seam.  The implementations — Prometheus metrics, the call
recorder and the softphone page's event stream — live in :mod:`acs_trio.control`
(``metrics.py``, ``recording.py``, ``softphone.py``), so this layer imports neither
prometheus-client nor any file I/O nor a socket, and a call without observers pays one no-op
method call per hook.  The control plane attaches one observer per call to
``CallHandle.observer`` before ``run_call`` (``control/observe.py`` fans one call's hooks out to
several).

Rules for implementations: every hook is synchronous and is called from the call's own tasks
(no checkpoint, so no interleaving with the call); it must return quickly (the per-frame hooks run
50 times a second per direction) and must never raise — a bug in an observer must not end a call.
All times are ``trio.current_time()`` readings; a recorder makes them call-relative with the
``started_at`` given to :meth:`CallObserver.on_start`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .lifecycle import CallIds, CallSummary

__all__ = ["NULL_OBSERVER", "CallObserver", "NullObserver"]


class CallObserver(Protocol):
    """Hooks a running call calls; see the module docstring for the rules."""

    def on_start(self, ids: CallIds, started_at: float) -> None:
        """The call's tasks are starting (``started_at`` is the summary's)."""

    def on_audio_format(self, sample_rate: int) -> None:
        """AudioMetadata fixed the call's rate (both directions use it)."""

    def on_caller_audio(self, pcm: bytes, silent: bool, at: float) -> None:
        """One ACS frame as received (``pcm`` may be empty when ``silent``)."""

    def on_agent_audio(self, pcm: bytes, at: float) -> None:
        """One agent frame was written to ACS; ``at`` is when its write started."""

    def on_stop_audio(self, at: float, latency_ms: float, flushed_ms: float) -> None:
        """StopAudio was written at ``at``: a barge-in.

        ``latency_ms``: speech_started → StopAudio written.  ``flushed_ms``: agent audio already
        written but (by the playout's estimate of ACS's queue) not yet played, which StopAudio
        discarded; the truncate's ``audio_end_ms`` overstates what was heard by about this much.
        """

    def on_ttfa(self, ms: float, *, greeting: bool) -> None:
        """Time to first audio of a turn's answer (or of the greeting)."""

    def on_caller_speech(self, started: bool, at: float, *, barge_in: bool = False) -> None:
        """The model's VAD: the caller started (True) or stopped (False) speaking.

        ``barge_in`` (with ``started``): agent audio was playing or queued and is now cut; a
        StopAudio follows (:meth:`on_stop_audio`).  Each ``started=False`` is one more turn
        (``CallSummary.turns``).
        """

    def on_transcript(self, role: str, text: str, at: float, *, item_id: str) -> None:
        """A finished transcript line; ``role`` is ``"caller"`` or ``"agent"``.

        ``item_id`` is the Realtime conversation item it belongs to.
        """

    def on_tool_call(self, name: str, ok: bool, duration_ms: float, at: float) -> None:
        """A tool call finished (the tools code calls this; see docs/operations.md)."""

    def on_end(self, summary: CallSummary) -> None:
        """The call is over and ``summary`` is final (end reason set); called exactly once."""


class NullObserver:
    """The default: observes nothing."""

    def on_start(self, ids: CallIds, started_at: float) -> None:
        pass

    def on_audio_format(self, sample_rate: int) -> None:
        pass

    def on_caller_audio(self, pcm: bytes, silent: bool, at: float) -> None:
        pass

    def on_agent_audio(self, pcm: bytes, at: float) -> None:
        pass

    def on_stop_audio(self, at: float, latency_ms: float, flushed_ms: float) -> None:
        pass

    def on_ttfa(self, ms: float, *, greeting: bool) -> None:
        pass

    def on_caller_speech(self, started: bool, at: float, *, barge_in: bool = False) -> None:
        pass

    def on_transcript(self, role: str, text: str, at: float, *, item_id: str) -> None:
        pass

    def on_tool_call(self, name: str, ok: bool, duration_ms: float, at: float) -> None:
        pass

    def on_end(self, summary: CallSummary) -> None:
        pass


NULL_OBSERVER: CallObserver = NullObserver()
