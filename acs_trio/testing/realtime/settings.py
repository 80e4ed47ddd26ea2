"""The local peer's knobs and the record each connection keeps of what happened."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["LocalPeerSettings", "PeerStats"]


@dataclass(frozen=True)
class LocalPeerSettings:
    """Knobs of the local test peer.  Units are in the names; defaults suit the demo and tests."""

    #: Fixed VAD level; ``None`` maps the session's 0..1 ``threshold`` (0.5 → −40 dBFS).
    vad_threshold_dbfs: float | None = None
    #: VAD analysis frame; turn boundaries are multiples of it.
    vad_frame_ms: int = 10
    #: Audio carried by one ``response.output_audio.delta`` (the service sends ~100-200 ms).
    chunk_ms: int = 100
    #: Deltas go out this many times faster than real time; ``None`` sends them in one burst.
    pace_factor: float | None = 5.0
    #: "Thinking time" between ``response.created`` and the first delta.
    first_delta_delay_s: float = 0.15
    #: Close a connection that sends nothing for this long.
    idle_timeout_s: float = 600.0
    #: Give up on a client that does not read its socket for this long.
    send_timeout_s: float = 10.0
    #: Input audio kept while nobody commits it (VAD off, or one endless turn).
    max_input_buffer_s: float = 120.0
    #: Largest client frame accepted: one ``append`` may carry 15 MiB of audio (docs/protocols/realtime.md §6), base64'd.
    max_message_size: int = 21 * 2**20
    #: Reported as ``session.model``.
    model: str = "acs-trio-local-test-peer"
    #: Seed for ids, so a test can reproduce a connection's ids; ``None`` = random.
    id_seed: int | None = None
    #: Script an agent hang-up: the echo of the caller's Nth phrase ends with a call of the
    #: ``end_call`` function (if the session offers it), as a model does after its goodbye.
    end_call_after_turns: int | None = None


@dataclass
class PeerStats:
    """What one connection did, for demo summaries and test assertions."""

    events_received: Counter[str] = field(default_factory=Counter)
    events_sent: Counter[str] = field(default_factory=Counter)
    #: Error codes sent, in order.
    errors: list[str] = field(default_factory=list)
    #: ``(audio_start_ms, audio_end_ms)`` of each VAD turn; end is ``None`` while speaking.
    turns: list[tuple[int, int | None]] = field(default_factory=list)
    #: ``"greeting"`` or ``"echo"`` per response created.
    responses: list[str] = field(default_factory=list)
    responses_completed: int = 0
    #: Names of the functions the peer called, in order.
    function_calls: list[str] = field(default_factory=list)
    #: ``status_details.reason`` per cancelled response (``turn_detected``/``client_cancelled``).
    cancels: list[str] = field(default_factory=list)
    #: ``(item_id, audio_end_ms)`` of each accepted truncation.
    truncations: list[tuple[str, int]] = field(default_factory=list)
    audio_in_ms: int = 0
    audio_out_ms: int = 0
    closed: bool = False
