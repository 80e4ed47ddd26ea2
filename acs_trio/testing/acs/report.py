"""What a simulated call measured, as seen from the ACS side, and the roll-up over many calls.

Every time here is on the simulator's Trio clock, in seconds since the media WebSocket opened
(``*_s``) or as a duration in milliseconds (``*_ms``).  ``to_json`` gives the machine form;
``render_call`` / ``render_aggregate`` give the lines a person reads.
"""

from __future__ import annotations

import bisect
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "AggregateReport",
    "CallReport",
    "Stats",
    "TurnReport",
    "finish_turns",
    "percentile",
    "render_aggregate",
    "render_call",
]


@dataclass
class TurnReport:
    """One caller utterance and the agent's answer to it."""

    utterance: int
    #: When the utterance's first non-silent frame was sent.
    speech_start_s: float
    #: When the last non-silent frame of the utterance was sent.
    speech_end_s: float
    #: First AudioData received after that (None: the agent never answered).
    first_audio_s: float | None = None
    #: True when this utterance was played over the agent's audio.
    barge_in: bool = False
    #: Barge-in only: StopAudio received this long after the utterance started.
    stop_audio_latency_ms: float | None = None

    @property
    def ttfa_ms(self) -> float | None:
        if self.first_audio_s is None:
            return None
        return round((self.first_audio_s - self.speech_end_s) * 1000, 1)


@dataclass
class CallReport:
    """Everything one simulated call observed.  ``failure`` is None for a successful call."""

    index: int
    caller: str
    call_connection_id: str = ""
    correlation_id: str = ""
    failure: str | None = None
    #: "simulator", "server (REST terminate …)", "server (WebSocket close)", or "" if never set up.
    hung_up_by: str = ""
    #: Close code of the media socket: ours (1000) or the one the server used.
    close_code: int | None = None
    close_reason: str = ""
    audio_format: str = ""
    incoming_call_status: int | None = None
    #: IncomingCall POSTed → answer request arrived at the fake REST endpoint.
    answer_ms: float | None = None
    frames_sent: int = 0
    silent_frames_sent: int = 0
    frames_received: int = 0
    received_audio_ms: float = 0.0
    #: Wall time from the first to the last AudioData received (compare with received_audio_ms).
    receive_span_ms: float = 0.0
    #: Audio the server sent that StopAudio flushed before it was played.
    discarded_audio_ms: float = 0.0
    stop_audio_s: list[float] = field(default_factory=list)
    #: Media socket open → first AudioData (the greeting).
    greeting_first_audio_s: float | None = None
    turns: list[TurnReport] = field(default_factory=list)
    #: Largest amount of audio queued ahead of real time at ACS.
    max_lead_ms: float = 0.0
    #: Playback ran dry inside a turn (underruns longer than one frame), in ms.
    gaps_ms: list[float] = field(default_factory=list)
    #: Message shapes seen from the server: "documented" (§4.4 Python shape), "camelCase", "other".
    shapes: dict[str, int] = field(default_factory=dict)
    unknown_messages: int = 0
    #: Protocol or contract deviations, each with how often it happened.
    deviations: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    recording: str | None = None
    #: Server REST hang-up minus the end of the agent's queued audio (call timeline), in ms.
    hang_up_after_played_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def fail(self, reason: str) -> None:
        """Record the first failure only; later ones are usually its consequences."""
        if self.failure is None:
            self.failure = reason

    def deviation(self, text: str) -> None:
        self.deviations[text] = self.deviations.get(text, 0) + 1

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        for turn, raw in zip(self.turns, data["turns"], strict=True):
            raw["ttfa_ms"] = turn.ttfa_ms
        return data


def finish_turns(
    turns: Sequence[TurnReport], audio_s: Sequence[float], stops_s: Sequence[float]
) -> None:
    """Fill in per-turn timings after the call from the sorted AudioData/StopAudio arrival times.

    Time to first audio = first AudioData at or after the end of the caller's speech.  Barge-in
    latency = first StopAudio at or after the start of the barge-in utterance.
    """
    for turn in turns:
        i = bisect.bisect_left(audio_s, turn.speech_end_s)
        turn.first_audio_s = round(audio_s[i], 3) if i < len(audio_s) else None
        if turn.barge_in:
            j = bisect.bisect_left(stops_s, turn.speech_start_s)
            if j < len(stops_s):
                turn.stop_audio_latency_ms = round((stops_s[j] - turn.speech_start_s) * 1000, 1)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class Stats:
    count: int
    p50: float | None
    p95: float | None
    max: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        return cls(
            len(values), percentile(values, 50), percentile(values, 95), max(values, default=None)
        )

    def text(self, unit: str = "ms") -> str:
        if not self.count:
            return "—"
        return (
            f"p50 {self.p50:.0f}{unit}  p95 {self.p95:.0f}{unit}  max {self.max:.0f}{unit}"
            f"  (n={self.count})"
        )


@dataclass
class AggregateReport:
    calls: list[CallReport]
    wall_s: float = 0.0

    @property
    def failed(self) -> list[CallReport]:
        return [c for c in self.calls if not c.ok]

    def stats(self) -> dict[str, Stats]:
        ttfa = [t.ttfa_ms for c in self.calls for t in c.turns if t.ttfa_ms is not None]
        barge = [
            t.stop_audio_latency_ms
            for c in self.calls
            for t in c.turns
            if t.stop_audio_latency_ms is not None
        ]
        return {
            "answer_ms": Stats.of([c.answer_ms for c in self.calls if c.answer_ms is not None]),
            "ttfa_ms": Stats.of(ttfa),
            "barge_in_latency_ms": Stats.of(barge),
            "max_lead_ms": Stats.of([c.max_lead_ms for c in self.calls if c.frames_received]),
            "gap_ms": Stats.of([g for c in self.calls for g in c.gaps_ms]),
        }

    def deviations(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for call in self.calls:
            total.update(call.deviations)
        return total

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": len(self.calls),
            "failed": len(self.failed),
            "wall_s": round(self.wall_s, 3),
            "stats": {name: asdict(s) for name, s in self.stats().items()},
            "deviations": dict(self.deviations()),
            "per_call": [c.to_json() for c in self.calls],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} ms"


def render_call(call: CallReport) -> str:
    """A short block per call: outcome first, then the numbers a user looks for."""
    status = "OK" if call.ok else f"FAILED: {call.failure}"
    lines = [
        f"call {call.index} [{call.call_connection_id or '-'}] {status}",
        f"  ended by {call.hung_up_by or '-'} (close code {call.close_code}), "
        f"{call.duration_s:.1f} s, format {call.audio_format or '-'}, answer {_ms(call.answer_ms)}",
        f"  frames sent {call.frames_sent} ({call.silent_frames_sent} silent), "
        f"received {call.frames_received} ({call.received_audio_ms / 1000:.1f} s audio over "
        f"{call.receive_span_ms / 1000:.1f} s, "
        f"{call.discarded_audio_ms / 1000:.1f} s flushed by StopAudio)",
    ]
    for turn in call.turns:
        extra = ""
        if turn.barge_in:
            extra = f", barge-in → StopAudio {_ms(turn.stop_audio_latency_ms)}"
        lines.append(f"  turn {turn.utterance}: time to first audio {_ms(turn.ttfa_ms)}{extra}")
    lines.append(
        f"  StopAudio ×{len(call.stop_audio_s)}, max lead {call.max_lead_ms:.0f} ms, "
        f"gaps {len(call.gaps_ms)} (max {max(call.gaps_ms, default=0):.0f} ms), "
        f"shapes {call.shapes or '{}'}"
    )
    lines.extend(f"  deviation: {text} (×{n})" for text, n in call.deviations.items())
    if call.recording:
        lines.append(f"  recording: {call.recording}")
    return "\n".join(lines)


def render_aggregate(report: AggregateReport) -> str:
    stats = report.stats()
    lines = [
        f"{len(report.calls)} calls, {len(report.failed)} failed, {report.wall_s:.1f} s wall",
        f"  answer latency      {stats['answer_ms'].text()}",
        f"  time to first audio {stats['ttfa_ms'].text()}",
        f"  barge-in → StopAudio {stats['barge_in_latency_ms'].text()}",
        f"  max lead            {stats['max_lead_ms'].text()}",
        f"  playback gaps       {stats['gap_ms'].text()}",
    ]
    lines.extend(f"  deviation: {text} (×{n})" for text, n in report.deviations().items())
    lines.extend(f"  call {c.index} failed: {c.failure}" for c in report.failed)
    return "\n".join(lines)
