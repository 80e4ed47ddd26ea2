"""Loads the shipped WAVs (package data) as raw PCM16 24 kHz mono, checking the format once."""

from __future__ import annotations

import functools
import io
import wave

from ...errors import ConfigError
from ..assets import asset_path

__all__ = ["GREETING_TRANSCRIPT", "load_pcm", "pcm_ms"]

#: What ``greeting.wav`` says (scripts/make_assets.sh).
GREETING_TRANSCRIPT = "Hi, test agent here. How can I help?"


def pcm_ms(n_bytes: int) -> int:
    """Duration of PCM16 24 kHz mono: 48 bytes per ms (docs/protocols/realtime.md §4)."""
    return n_bytes // 48


@functools.cache
def load_pcm(name: str) -> bytes:
    """PCM frames of ``acs_trio/testing/assets/<name>``; raises ConfigError if it is not 24 kHz mono s16.

    pyproject ships ``testing/assets/*.wav`` as package data, so this works from a wheel as well as from a
    checkout.
    """
    data = asset_path(name).read_bytes()
    with wave.open(io.BytesIO(data), "rb") as wav:
        shape = (wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
        if shape != (24_000, 1, 2):
            raise ConfigError(f"asset {name}: expected 24000 Hz mono 16-bit, got {shape}")
        return wav.readframes(wav.getnframes())
