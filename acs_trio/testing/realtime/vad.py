"""An energy voice-activity detector on the audio timeline: pure, sync, sample-exact.

The real service's server VAD is a model; this stand-in only compares each frame's RMS level with a
threshold in dBFS.  Time is the count of samples received, never a clock, so a test that sends
1.0 s of silence then 1.0 s of tone knows to the millisecond what the events will say.

Semantics (docs/protocols/realtime.md §3.2): ``audio_start_ms`` counts from the start of all
audio written in the session and includes ``prefix_padding_ms``.  ``audio_end_ms`` is where the
silence that ended the turn reached ``silence_duration_ms``, i.e. the last voiced frame's end plus
the silence duration [INF: docs/protocols/realtime.md is silent; this matches the SDK's description of the end of audio
sent to the model including the configured silence].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["SAMPLE_RATE", "EnergyVad", "VadConfig", "VadEvent", "dbfs", "threshold_to_dbfs"]

#: PCM16 mono at 24 kHz (docs/protocols/realtime.md §4).
SAMPLE_RATE = 24_000


def threshold_to_dbfs(threshold: float) -> float:
    """Map the session's 0..1 ``threshold`` onto −70..−10 dBFS (0.5 → −40 dBFS).

    [INF] The real threshold is a model probability; a linear map onto a level range wide enough
    for phone speech (≈ −30..−15 dBFS RMS) and quiet lines (< −60) keeps "higher = less sensitive".
    """
    return -70.0 + 60.0 * threshold


def dbfs(pcm: bytes) -> float:
    """RMS level of PCM16LE samples in dBFS (``-inf`` for digital silence or no samples)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    if samples.size == 0:
        return -math.inf
    rms = math.sqrt(float(np.mean(samples * samples)))
    return -math.inf if rms == 0.0 else 20.0 * math.log10(rms / 32768.0)


@dataclass(frozen=True)
class VadConfig:
    """How the detector listens; built by the session from ``turn_detection`` and peer settings."""

    threshold_dbfs: float = -40.0
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    frame_ms: int = 10


@dataclass(frozen=True)
class VadEvent:
    """A turn boundary at ``sample`` (a sample index on the session's audio timeline).

    A ``stopped`` event also says where its turn began (``turn_start``, prefix padding included)
    and where its last voiced frame ended (``voiced_end``), since several turns can end in one
    ``feed``.
    """

    kind: Literal["started", "stopped"]
    sample: int
    turn_start: int = 0
    voiced_end: int = 0

    @property
    def ms(self) -> int:
        return self.sample * 1000 // SAMPLE_RATE


class EnergyVad:
    """Frame-by-frame speech detector.  Feed it PCM in any chunking; it returns turn boundaries."""

    def __init__(self, config: VadConfig, *, start_sample: int = 0) -> None:
        self.config = config
        self._frame = SAMPLE_RATE * config.frame_ms // 1000
        self._pending = b""
        #: Samples consumed into whole frames so far.
        self.position = start_sample
        #: Where audio may begin for the next turn: nothing before the previous turn's end.
        self._floor = start_sample
        self.speaking = False
        self.speech_start = 0
        self._last_voiced_end = 0

    @property
    def prefix_samples(self) -> int:
        return SAMPLE_RATE * self.config.prefix_padding_ms // 1000

    @property
    def silence_samples(self) -> int:
        return SAMPLE_RATE * self.config.silence_duration_ms // 1000

    def feed(self, pcm: bytes) -> list[VadEvent]:
        """Consume ``pcm``; return the turn boundaries found in it, in order."""
        data = self._pending + pcm
        step = self._frame * 2
        whole = len(data) - len(data) % step
        self._pending = data[whole:]
        events: list[VadEvent] = []
        for offset in range(0, whole, step):
            start = self.position
            end = start + self._frame
            self.position = end
            voiced = dbfs(data[offset : offset + step]) >= self.config.threshold_dbfs
            if voiced:
                self._last_voiced_end = end
                if not self.speaking:
                    self.speaking = True
                    self.speech_start = max(self._floor, start - self.prefix_samples)
                    events.append(VadEvent("started", self.speech_start))
            elif self.speaking and end - self._last_voiced_end >= self.silence_samples:
                self.speaking = False
                self._floor = end
                events.append(VadEvent("stopped", end, self.speech_start, self._last_voiced_end))
        return events

    def reset(self, *, at_sample: int) -> None:
        """Forget any turn in progress (after a manual commit or clear); resume at ``at_sample``."""
        self._pending = b""
        self.position = at_sample
        self._floor = at_sample
        self.speaking = False
