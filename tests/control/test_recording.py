"""The recorder's edges: a crashing call, a disk that falls behind, retention."""

from __future__ import annotations

import json
import os
import time
import wave
from pathlib import Path

import pytest
import trio

from acs_trio.call.lifecycle import CallHandle, CallIds
from acs_trio.control.metrics import Metrics
from acs_trio.control.observe import observe_call
from acs_trio.control.recording import CallRecorder, _Writer, sweep_recordings

FRAME = 960  # 20 ms at 24 kHz, mono PCM16


async def test_a_crashing_call_still_closes_its_files(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    handle = CallHandle(CallIds("call-9", "corr-9"))
    with pytest.raises(ExceptionGroup) as raised:  # noqa: PT012 - the call's body
        async with observe_call(handle, metrics=Metrics(), recordings_dir=tmp_path):
            observer = handle.observer
            t0 = trio.current_time()
            observer.on_start(handle.ids, t0)
            for n in range(100):  # 2 s of caller audio, some agent audio
                await trio.sleep_until(t0 + 0.02 * (n + 1))
                observer.on_caller_audio(bytes([n % 250 + 1]) * FRAME, False, trio.current_time())
                observer.on_agent_audio(b"\x10\x00" * 480, trio.current_time())
            raise RuntimeError("bug in the call")  # no on_end: the summary never came
    assert raised.group_contains(RuntimeError, match="bug in the call")
    check_closed_after_crash(tmp_path)


def check_closed_after_crash(tmp_path: Path) -> None:
    [wav_path] = tmp_path.glob("*/*_call-9.wav")
    with wave.open(str(wav_path)) as w:  # a valid header: the writer closed the file
        assert w.getnchannels() == 2
        frames = w.getnframes()
        data = w.readframes(frames)
    assert frames == 100 * 480
    assert len(data) == frames * 4
    summary = json.loads(wav_path.with_suffix(".summary.json").read_text())
    assert summary["end_reason"] == "crashed"
    assert "bug in the call" in summary["end_detail"]
    transcript = wav_path.with_suffix(".transcript.jsonl").read_text().splitlines()
    assert json.loads(transcript[-1])["type"] == "call_ended"


def test_a_slow_disk_costs_recorded_audio_not_the_call(tmp_path: Path) -> None:
    """Policy: beyond the queue bound, chunks become silence of the same length, counted."""
    drops: list[int] = []
    recorder = CallRecorder(tmp_path, on_drop=lambda: drops.append(1), max_queued_chunks=3)
    recorder.on_start(CallIds("call-7"), 100.0)
    # The writer thread is stalled (not started): the queue fills, then chunks are dropped.
    for n in range(150):  # 3 s of caller audio → 6 chunks of 500 ms
        recorder.on_caller_audio(b"\x01\x00" * 480, False, 100.0 + 0.02 * (n + 1))
    assert len(drops) >= 3
    assert recorder.queue.qsize() < 3 + 2 + len(drops) + 1  # small messages only beyond the bound
    recorder._finish(103.0, {"end_reason": "caller_hung_up"})
    writer = _Writer(recorder.queue)
    writer.run()  # the disk catches up
    [wav_path] = tmp_path.glob("*/*_call-7.wav")
    with wave.open(str(wav_path)) as w:
        assert w.getnframes() == 150 * 480  # aligned: dropped chunks are silence, not missing
        left = w.readframes(w.getnframes())[::4]
    assert left.count(b"\x01") == (150 - recorder.dropped_ms / 20) * 480
    summary = json.loads((wav_path.parent / (wav_path.stem + ".summary.json")).read_text())
    assert summary["recording"]["dropped_ms"] == recorder.dropped_ms > 0


def test_retention_deletes_only_old_recordings(tmp_path: Path) -> None:
    day = tmp_path / "2026-01-01"
    day.mkdir()
    old, new = day / "010000_a.wav", day / "020000_b.wav"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    other = tmp_path / "not-ours"
    other.mkdir()
    (other / "keep.wav").write_bytes(b"x")
    now = time.time()
    os.utime(old, (now - 31 * 86400, now - 31 * 86400))
    assert sweep_recordings(tmp_path, 30, now=now) == 1
    assert not old.exists() and new.exists() and (other / "keep.wav").exists()
    os.utime(new, (now - 31 * 86400, now - 31 * 86400))
    assert sweep_recordings(tmp_path, 0, now=now) == 0  # 0 keeps forever
    assert sweep_recordings(tmp_path, 30, now=now) == 1
    assert not day.exists()  # the empty day folder goes too


def test_a_failing_observer_is_switched_off_and_never_reaches_the_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from acs_trio.call.observer import NullObserver
    from acs_trio.control.observe import Tee

    class Broken(NullObserver):
        def on_caller_audio(self, pcm: bytes, silent: bool, at: float) -> None:
            raise ZeroDivisionError

    class Counting(NullObserver):
        frames = 0

        def on_caller_audio(self, pcm: bytes, silent: bool, at: float) -> None:
            self.frames += 1

    counting = Counting()
    tee = Tee(Broken(), counting)
    for _ in range(3):
        tee.on_caller_audio(b"", True, 0.0)
    assert counting.frames == 3
    assert caplog.text.count("switched off for this call") == 1
