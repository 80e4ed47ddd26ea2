"""Loads the shipped WAVs (package data) as raw PCM16 24 kHz mono, checking the format once."""

from __future__ import annotations

import functools
import io
import wave
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from ..errors import ConfigError

__all__ = ["GREETING_TRANSCRIPT", "load_pcm", "pcm_ms"]

#: What ``greeting.wav`` says (scripts/make_assets.sh).
GREETING_TRANSCRIPT = "Hi, test agent here. How can I help?"


def pcm_ms(n_bytes: int) -> int:
    """Duration of PCM16 24 kHz mono: 48 bytes per ms (realtime-protocol.md §4)."""
    return n_bytes // 48


@functools.cache
def load_pcm(name: str) -> bytes:
    """PCM frames of ``acs_trio/assets/<name>``; raises ConfigError if it is not 24 kHz mono s16."""
    data = _package_root().joinpath("assets", name).read_bytes()
    with wave.open(io.BytesIO(data), "rb") as wav:
        shape = (wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
        if shape != (24_000, 1, 2):
            raise ConfigError(f"asset {name}: expected 24000 Hz mono 16-bit, got {shape}")
        return wav.readframes(wav.getnframes())


def _package_root() -> Traversable:
    """``acs_trio``'s package data root.

    ``importlib.resources`` cannot open a namespace package whose path holds an editable-install
    hook (as ``acs_trio`` is while it has no ``__init__.py``); fall back to this file's location.
    """
    try:
        return resources.files("acs_trio")
    except (NotADirectoryError, TypeError):
        return Path(__file__).resolve().parent.parent
