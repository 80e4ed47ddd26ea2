"""Caller audio in, agent audio out: WAV loading, 20 ms framing, silence, and the playout model.

Pure and synchronous (numpy).  :class:`PlayoutTrack` models what ACS does with audio the server
sends back: it *queues* it and plays it in real time, and ``StopAudio`` flushes the queue
(docs/protocols/acs.md §4.4).  Recording through that model shows what the caller would actually hear,
and when.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ...errors import ConfigError
from ..assets import asset_path

__all__ = [
    "FRAME_S",
    "Clip",
    "PlayoutTrack",
    "frame_bytes",
    "frames_of",
    "is_silent",
    "load_wav",
    "split_at_longest_silence",
    "write_wav",
]

Samples = npt.NDArray[np.int16]

#: ACS sends 50 frames per second (docs/protocols/acs.md §4.3).
FRAME_S = 0.02
#: Frames quieter than this RMS (int16 units, about -50 dBFS) go out as ``silent: true`` zeros.
DEFAULT_SILENCE_RMS = 100.0
SUPPORTED_RATES = (16000, 24000)


def frame_bytes(rate: int) -> int:
    """PCM bytes in one 20 ms mono PCM16 frame: 640 at 16 kHz, 960 at 24 kHz (§4.3)."""
    return rate // 50 * 2


@dataclass(frozen=True)
class Clip:
    """Mono PCM16 audio at a known rate."""

    rate: int
    samples: Samples

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.rate

    def resampled(self, rate: int) -> Clip:
        """Linear-interpolation resample; good enough for speech fed to a VAD."""
        if rate == self.rate or not len(self.samples):
            return Clip(rate, self.samples)
        count = round(len(self.samples) * rate / self.rate)
        positions = np.arange(count) * (self.rate / rate)
        values = np.interp(positions, np.arange(len(self.samples)), self.samples)
        return Clip(rate, np.round(values).astype(np.int16))


def load_wav(path: Path | None = None) -> Clip:
    """Read a 16/24 kHz mono PCM16 WAV; ``None`` reads the packaged ``caller.wav``."""
    if path is None:
        return load_wav(asset_path("caller.wav"))
    try:
        with wave.open(str(path), "rb") as wav:
            rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
            raw = wav.readframes(wav.getnframes())
    except (OSError, wave.Error, EOFError) as exc:
        raise ConfigError(f"cannot read WAV {path}: {exc}") from exc
    if channels != 1 or width != 2 or rate not in SUPPORTED_RATES:
        raise ConfigError(
            f"{path}: need mono 16-bit PCM at 16 or 24 kHz, got {channels} ch, "
            f"{8 * width} bit, {rate} Hz"
        )
    return Clip(rate, np.frombuffer(raw, dtype="<i2").astype(np.int16))


def write_wav(path: Path, rate: int, channels: Samples) -> None:
    """Write int16 samples (shape ``(n,)`` or ``(n, channels)``) as a PCM16 WAV."""
    data = channels if channels.ndim == 2 else channels.reshape(-1, 1)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(data.shape[1])
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(data.astype("<i2").tobytes())


def frames_of(clip: Clip) -> list[Samples]:
    """Cut a clip into 20 ms frames, zero-padding the last one."""
    size = clip.rate // 50
    padded = np.zeros(-(-len(clip.samples) // size) * size, dtype=np.int16)
    padded[: len(clip.samples)] = clip.samples
    return list(padded.reshape(-1, size))


def is_silent(frame: Samples, threshold_rms: float = DEFAULT_SILENCE_RMS) -> bool:
    """True when the frame's energy is below the threshold (what ACS marks ``silent``)."""
    if not len(frame):
        return True
    return float(np.sqrt(np.mean(frame.astype(np.float64) ** 2))) < threshold_rms


def split_at_longest_silence(
    clip: Clip, *, threshold_rms: float = DEFAULT_SILENCE_RMS, min_gap_s: float = 0.3
) -> tuple[Clip, Clip | None]:
    """Split a two-utterance recording in the middle of its longest inner silence.

    Returns ``(clip, None)`` when there is no silent run of at least ``min_gap_s`` between two
    stretches of speech.  Each half keeps half of the gap, so both still sound natural.
    """
    size = clip.rate // 50
    silent = [is_silent(f, threshold_rms) for f in frames_of(clip)]
    voiced = [i for i, s in enumerate(silent) if not s]
    if not voiced:
        return clip, None
    best_start, best_len, run_start = 0, 0, None
    for i in range(voiced[0], voiced[-1] + 1):
        if silent[i] and run_start is None:
            run_start = i
        elif not silent[i] and run_start is not None:
            if i - run_start > best_len:
                best_start, best_len = run_start, i - run_start
            run_start = None
    if best_len * size < min_gap_s * clip.rate:
        return clip, None
    cut = (best_start + best_len // 2) * size
    return Clip(clip.rate, clip.samples[:cut]), Clip(clip.rate, clip.samples[cut:])


class PlayoutTrack:
    """ACS's outbound queue, replayed on the call timeline (seconds since the media socket opened).

    Audio arriving at ``t`` starts playing at ``max(t, end of queued audio)``; ``StopAudio`` at
    ``t`` discards everything not yet played.  Alongside, it measures pacing: how far ahead of
    real time the server runs (lead) and where playback ran dry inside a turn (gaps).
    """

    #: A silence longer than this between chunks is a new turn, not an underrun.
    TURN_BREAK_S = 1.0
    #: Underruns up to one frame are jitter, not a gap.
    GAP_TOLERANCE_S = 0.04

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._segments: list[tuple[int, Samples]] = []
        self.play_end_s = 0.0
        self.received_ms = 0.0
        self.discarded_ms = 0.0
        self.max_lead_ms = 0.0
        self.gaps_ms: list[float] = []
        self.first_arrival_s: float | None = None
        self.last_arrival_s: float | None = None
        self._after_stop = False

    def add(self, t: float, pcm: bytes) -> None:
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.int16)
        duration = len(samples) / self.rate
        if self.first_arrival_s is None:
            self.first_arrival_s = t
        elif not self._after_stop:
            dry = t - self.play_end_s
            if self.GAP_TOLERANCE_S < dry < self.TURN_BREAK_S:
                self.gaps_ms.append(dry * 1000)
        self._after_stop = False
        self.last_arrival_s = t
        start = max(t, self.play_end_s)
        self._segments.append((round(start * self.rate), samples))
        self.play_end_s = start + duration
        self.received_ms += duration * 1000
        self.max_lead_ms = max(self.max_lead_ms, (self.play_end_s - t) * 1000)

    def stop(self, t: float) -> float:
        """Flush audio queued beyond ``t``; returns how many ms the caller will never hear."""
        self._after_stop = True
        if self.play_end_s <= t:
            return 0.0
        cut = round(t * self.rate)
        kept: list[tuple[int, Samples]] = []
        for start, samples in self._segments:
            if start + len(samples) <= cut:
                kept.append((start, samples))
            elif start < cut:
                kept.append((start, samples[: cut - start]))
        self._segments = kept
        discarded = (self.play_end_s - t) * 1000
        self.discarded_ms += discarded
        self.play_end_s = t
        return discarded

    def render(self, duration_s: float) -> Samples:
        out = np.zeros(max(round(duration_s * self.rate), 0), dtype=np.int16)
        for start, samples in self._segments:
            end = min(start + len(samples), len(out))
            if end > start:
                out[start:end] = samples[: end - start]
        return out
