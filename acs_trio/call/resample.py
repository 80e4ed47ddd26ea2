"""Streaming PCM16 resampling between 16 kHz calls and the model's 24 kHz.

The realtime model accepts PCM only at 24 kHz (docs/protocols/realtime.md §4), while an ACS call may
stream 16 kHz (AudioMetadata ``sampleRate``, docs/protocols/acs.md §4.2).  Audio arrives in 20 ms
frames and arbitrary-sized model deltas, so the filter state (the last input samples and the
output phase) is carried from one chunk to the next: resampling a stream chunk by chunk gives
exactly the samples one call over the whole stream would, with no clicks at frame edges.

Method: a polyphase windowed-sinc FIR (up by L, low-pass, down by M), vectorised with numpy.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["Resampler"]


class Resampler:
    """Rational resampler for mono PCM16LE with state kept across calls to :meth:`process`."""

    def __init__(self, from_hz: int, to_hz: int, *, taps_per_phase: int = 16) -> None:
        g = math.gcd(from_hz, to_hz)
        self.from_hz = from_hz
        self.to_hz = to_hz
        self._up = to_hz // g
        self._down = from_hz // g
        self._taps = taps_per_phase
        n = taps_per_phase * self._up
        # Cut-off just under the lower Nyquist frequency, in cycles per upsampled sample.
        cutoff = 0.45 / max(self._up, self._down)
        k = np.arange(n) - (n - 1) / 2
        h = 2 * cutoff * np.sinc(2 * cutoff * k) * np.kaiser(n, 8.0)
        h *= self._up / h.sum()  # unity gain after zero-stuffing
        # phases[p, j] = h[p + j*up]; reversed along j so a window of input can be dotted directly.
        self._phases: npt.NDArray[np.float64] = (
            h.reshape(taps_per_phase, self._up).T[:, ::-1].copy()
        )
        self._history: npt.NDArray[np.float64] = np.zeros(taps_per_phase - 1)
        self._next_t = 0  # position of the next output sample, in upsampled units from chunk start

    def process(self, pcm: bytes) -> bytes:
        """Resample one chunk; returns however many whole output samples it completes."""
        if not pcm:
            return b""
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        extended = np.concatenate((self._history, x))
        span = len(x) * self._up
        t = np.arange(self._next_t, span, self._down)
        self._next_t = int(self._next_t + len(t) * self._down - span)
        self._history = extended[len(extended) - (self._taps - 1) :]
        if len(t) == 0:
            return b""
        windows = np.lib.stride_tricks.sliding_window_view(extended, self._taps)[t // self._up]
        y = np.einsum("ij,ij->i", windows, self._phases[t % self._up])
        out: bytes = np.clip(np.rint(y), -32768, 32767).astype("<i2").tobytes()
        return out
