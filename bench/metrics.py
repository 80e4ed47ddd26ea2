"""Time-stamped samples, kept compactly, and cut into the measurement windows afterwards.

Every sample carries the monotonic time at which it was taken, so a load level's window is just
a time range; nothing has to be reset between levels.
"""

from __future__ import annotations

import bisect
import math
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field


def now_ns() -> int:
    return time.monotonic_ns()


class Series:
    """(time ns, value ms) samples, appended in time order."""

    __slots__ = ("t", "v")

    def __init__(self) -> None:
        self.t = array("q")
        self.v = array("d")

    def add(self, t_ns: int, value_ms: float) -> None:
        self.t.append(t_ns)
        self.v.append(value_ms)

    def window(self, t0: int, t1: int) -> list[float]:
        lo = bisect.bisect_left(self.t, t0)
        hi = bisect.bisect_right(self.t, t1)
        return sorted(self.v[lo:hi])


def pct(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def summary(values: list[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "p99": pct(values, 99),
        "max": values[-1] if values else None,
    }


@dataclass
class Events:
    """Counted happenings (failures, underruns...) with their times, by name."""

    items: list[tuple[int, str]] = field(default_factory=list)

    def add(self, what: str, t_ns: int | None = None) -> None:
        self.items.append((now_ns() if t_ns is None else t_ns, what))

    def window(self, t0: int, t1: int) -> Counter[str]:
        return Counter(what for t, what in self.items if t0 <= t <= t1)


@dataclass
class Sink:
    """All measurements of one run."""

    # Every caller frame: ACS frame sent → the model receives the append holding it (batch wait
    # included).  hop_in_last: the last frame of each append only (the bridge's own share).
    hop_in: Series = field(default_factory=Series)
    hop_in_last: Series = field(default_factory=Series)
    # Every agent frame: model delta sent → AudioData at ACS, split into out_pacing (held back on
    # purpose by real-time pacing) and hop_out (the rest: the bridge's delay); out_total = both.
    hop_out: Series = field(default_factory=Series)
    out_pacing: Series = field(default_factory=Series)
    out_total: Series = field(default_factory=Series)
    hop_out_first: Series = field(default_factory=Series)  # first frame of each response only
    # conversation.item.truncate audio_end_ms − ms the caller had heard at StopAudio
    truncate_err: Series = field(default_factory=Series)
    ttfa: Series = field(default_factory=Series)  # speech_stopped sent → first answer frame at ACS
    barge: Series = field(default_factory=Series)  # barge speech_started sent → StopAudio at ACS
    teardown: Series = field(default_factory=Series)  # ACS close sent → model sees server's close
    setup: Series = field(default_factory=Series)  # IncomingCall POST → media socket open
    gen_lag: Series = field(default_factory=Series)  # generator frame-clock lateness
    failures: Events = field(default_factory=Events)
    events: Events = field(default_factory=Events)
    calls_started: int = 0
    calls_done: int = 0
    calls_failed: int = 0
