"""``acs-trio simulate`` refuses bad arguments before it starts anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from acs_trio.testing.acs.audio import write_wav
from acs_trio.testing.acs.cli import main


def test_zero_calls_is_a_usage_error() -> None:
    assert main(["--server", "http://127.0.0.1:9", "--calls", "0"]) == 2


def test_barge_in_needs_two_utterances(tmp_path: Path) -> None:
    wav = tmp_path / "one.wav"
    write_wav(wav, 24000, np.full(24000, 3000, dtype=np.int16))
    assert main(["--server", "http://127.0.0.1:9", "--wav", str(wav), "--barge-in"]) == 2


def test_unreadable_wav_is_a_usage_error(tmp_path: Path) -> None:
    wav = tmp_path / "stereo.wav"
    write_wav(wav, 44100, np.zeros((10, 2), dtype=np.int16))
    assert main(["--server", "http://127.0.0.1:9", "--wav", str(wav)]) == 2
