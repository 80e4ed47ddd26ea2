"""The input audio buffer and its VAD: which samples belong to the turn being spoken.

Pure and sync.  Samples are indexed on the session's audio timeline (sample 0 = first appended
sample), the same timeline ``audio_start_ms``/``audio_end_ms`` are measured on (docs/protocols/realtime.md §3.2).  Memory
stays bounded: while nobody speaks only the prefix-padding window is kept, and the whole buffer is
capped at ``max_input_buffer_s``.
"""

from __future__ import annotations

from typing import Any

from .settings import LocalPeerSettings
from .vad import SAMPLE_RATE, EnergyVad, VadConfig, VadEvent, threshold_to_dbfs

__all__ = ["InputBuffer"]


class InputBuffer:
    """Audio appended but not yet committed, plus the energy VAD that watches it."""

    def __init__(self, settings: LocalPeerSettings, turn_detection: dict[str, Any] | None) -> None:
        self._settings = settings
        self._buf = bytearray()
        self._start = 0  # sample index of _buf[0]
        #: Every byte ever appended (the audio timeline's length, in bytes).
        self.total_bytes = 0
        self.vad: EnergyVad | None = None
        self.configure(turn_detection)

    @property
    def total_samples(self) -> int:
        return self.total_bytes // 2

    def configure(self, turn_detection: dict[str, Any] | None) -> None:
        """Apply a session's ``turn_detection`` (``None`` = VAD off); a change drops a turn."""
        if turn_detection is None:
            self.vad = None
            return
        fixed = self._settings.vad_threshold_dbfs
        config = VadConfig(
            threshold_dbfs=(
                threshold_to_dbfs(turn_detection["threshold"]) if fixed is None else fixed
            ),
            prefix_padding_ms=turn_detection["prefix_padding_ms"],
            silence_duration_ms=turn_detection["silence_duration_ms"],
            frame_ms=self._settings.vad_frame_ms,
        )
        if self.vad is None or self.vad.config != config:
            self.vad = EnergyVad(config, start_sample=self.total_samples)

    def append(self, pcm: bytes) -> list[VadEvent]:
        """Add audio; return the VAD's turn boundaries (the caller then takes each turn)."""
        self._buf += pcm
        self.total_bytes += len(pcm)
        events = [] if self.vad is None else self.vad.feed(pcm)
        self._trim(events)
        return events

    def buffered_ms(self) -> float:
        return len(self._buf) / 2 * 1000 / SAMPLE_RATE

    def take_all(self) -> bytes:
        """Everything buffered (a manual commit or a clear); the VAD forgets any turn."""
        audio = bytes(self._buf[: len(self._buf) - len(self._buf) % 2])
        self._buf.clear()
        self._start = self.total_samples
        if self.vad is not None:
            self.vad.reset(at_sample=self.total_samples)
        return audio

    def take_turn(self, stopped: VadEvent) -> tuple[bytes, bytes]:
        """The turn that just ended with ``stopped``: (committed audio, the voiced part of it).

        The committed audio runs from ``audio_start_ms`` (prefix padding included) to
        ``audio_end_ms`` (the closing silence included); the voiced part stops at the last frame
        above the threshold, which is what the peer echoes back.
        """
        end_sample = stopped.sample
        start = max(self._start, stopped.turn_start)
        voiced_end = max(start, min(end_sample, stopped.voiced_end))
        audio = bytes(self._slice(start, end_sample))
        spoken = audio[: (voiced_end - start) * 2]
        del self._buf[: (end_sample - self._start) * 2]
        self._start = end_sample
        return audio, spoken

    def _slice(self, start: int, end: int) -> bytearray:
        return self._buf[(start - self._start) * 2 : (end - self._start) * 2]

    def _trim(self, events: list[VadEvent]) -> None:
        keep_from = self.total_samples - int(self._settings.max_input_buffer_s * SAMPLE_RATE)
        if (
            self.vad is not None
            and not self.vad.speaking
            and not any(e.kind == "stopped" for e in events)
        ):
            # Idle: only the audio a future turn's prefix padding can reach back to matters.
            margin = self.vad.prefix_samples + 2 * SAMPLE_RATE * self.vad.config.frame_ms // 1000
            keep_from = max(keep_from, self.total_samples - margin)
        if keep_from > self._start:
            del self._buf[: (keep_from - self._start) * 2]
            self._start = keep_from
