"""Streaming 16 kHz <-> 24 kHz resampling keeps its state across chunks."""

from __future__ import annotations

import numpy as np
import pytest

from acs_trio.call.resample import Resampler


def sine(freq: float, rate: int, seconds: float) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * freq * t) * 10000).astype("<i2").tobytes()


def dominant_hz(pcm: bytes, rate: int) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(float)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize(("src", "dst"), [(16000, 24000), (24000, 16000)])
def test_chunked_equals_one_shot_and_keeps_pitch(src: int, dst: int) -> None:
    audio = sine(440, src, 1.0)
    whole = Resampler(src, dst).process(audio)
    chunked = Resampler(src, dst)
    # Odd chunk sizes, like model deltas, must not change a single sample.
    sizes = [2 * n for n in (320, 7, 1, 500, 333, 2)]
    pieces, offset, i = [], 0, 0
    while offset < len(audio):
        size = sizes[i % len(sizes)]
        pieces.append(chunked.process(audio[offset : offset + size]))
        offset += size
        i += 1
    assert b"".join(pieces) == whole
    assert len(whole) // 2 == pytest.approx(len(audio) // 2 * dst / src, abs=1)
    assert dominant_hz(whole, dst) == pytest.approx(440, abs=2)


def test_a_20ms_frame_maps_to_exactly_20ms() -> None:
    up = Resampler(16000, 24000)
    assert [len(up.process(b"\x00\x10" * 320)) for _ in range(5)] == [960] * 5


def test_unity_gain_on_a_steady_signal() -> None:
    pcm = Resampler(16000, 24000).process((1000).to_bytes(2, "little") * 1600)
    tail = np.frombuffer(pcm, dtype="<i2")[200:]
    assert np.all(np.abs(tail - 1000) <= 2)
