"""The recorder's edges: a crashing call, a disk that falls behind, retention."""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import wave
from pathlib import Path
from typing import Any

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


def test_a_peer_sending_faster_than_real_time_cannot_grow_the_recorder(tmp_path: Path) -> None:
    """Memory per call is bounded even when frames come faster than they play (a burst after a
    network stall, a misbehaving softphone page): the caller channel stays bit-exact."""
    recorder = CallRecorder(tmp_path, max_queued_chunks=10_000)
    recorder.on_start(CallIds("call-fast"), 100.0)
    frames = [bytes([n % 250 + 1, 0]) * 480 for n in range(3000)]  # 60 s of audio...
    largest = 0
    for n, frame in enumerate(frames):  # ...in 1.5 s
        recorder.on_caller_audio(frame, False, 100.0 + 0.0005 * (n + 1))
        largest = max(largest, len(recorder._left), len(recorder._right))
    assert largest <= 2 * 24000 * 2  # at most about 2 s of audio held, not 60
    recorder._finish(101.5, {"end_reason": "caller_hung_up"})
    _Writer(recorder.queue).run()
    [wav_path] = tmp_path.glob("*/*_call-fast.wav")
    with wave.open(str(wav_path)) as w:
        stereo = w.readframes(w.getnframes())
    left = b"".join(stereo[i : i + 2] for i in range(0, len(stereo), 4))
    assert left == b"".join(frames)


def test_a_full_disk_stops_the_writer_not_the_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Buffered text reaches the disk at flush: ENOSPC there is recorded, the thread ends
    normally (an exception out of it would cancel the live call it records)."""
    from acs_trio.control import recording

    def full_disk(path: Path, mode: str, **kwargs: Any) -> Any:
        return open("/dev/full", "w", **kwargs)  # writes buffer; the flush fails with ENOSPC

    monkeypatch.setattr(recording, "open", full_disk, raising=False)
    stem = tmp_path / "2026-01-01" / "000000_call-full"
    jobs: queue.Queue[tuple[Any, ...]] = queue.Queue()
    writer = _Writer(jobs)
    escaped: list[BaseException] = []

    def run() -> None:
        try:
            writer.run()
        except BaseException as exc:  # what trio.to_thread would raise into the call
            escaped.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    jobs.put(("open", stem))
    jobs.put(("line", {"t_ms": 0, "type": "call_started"}))  # the queue empties: a flush
    while not jobs.empty():
        time.sleep(0.01)
    time.sleep(0.1)
    jobs.put(("end",))
    thread.join(5)
    assert escaped == []
    assert isinstance(writer.error, OSError) and writer.done.is_set()


def test_a_transcript_line_that_is_not_valid_unicode_is_still_written(tmp_path: Path) -> None:
    """A lone surrogate (valid in JSON text, not in UTF-8) must not kill the writer."""
    recorder = CallRecorder(tmp_path)
    recorder.on_start(CallIds("call-odd"), 100.0)
    recorder.on_transcript("agent", "half an emoji \ud83d", 100.5, item_id="item_1")
    recorder._finish(101.0, {"end_reason": "caller_hung_up", "end_detail": "\udc80"})
    writer = _Writer(recorder.queue)
    writer.run()
    assert writer.error is None
    [path] = tmp_path.glob("*/*_call-odd.transcript.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[1]["text"] == "half an emoji \ud83d"


async def test_a_bug_in_the_writer_stops_the_recording_not_the_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: _Writer, job: tuple[Any, ...]) -> None:
        raise RuntimeError("bug in the writer")

    monkeypatch.setattr(_Writer, "_do", broken)
    handle = CallHandle(CallIds("call-bug"))
    async with observe_call(handle, metrics=None, recordings_dir=tmp_path):
        handle.observer.on_start(handle.ids, trio.current_time())
        await trio.sleep(0.2)  # real clock: the writer thread meets the bug meanwhile
        finished = True  # the call went on
    assert finished
    assert "bug in the writer" in caplog.text


def test_a_re_established_media_socket_in_the_same_second_keeps_both_recordings(
    tmp_path: Path,
) -> None:
    """ACS re-establishes a call's media socket: a second recording of the same call id, maybe
    within the same second (the same file stem).  It must not overwrite the first."""
    stem = tmp_path / "2026-01-01" / "120000_call-again"
    for n in (1, 2):
        jobs: queue.Queue[tuple[Any, ...]] = queue.Queue()
        for job in [
            ("open", stem),
            ("line", {"t_ms": 0, "type": "socket", "n": n}),
            ("audio", 24000, bytes([n, 0]) * 480, b""),
            ("summary", {"n": n}),
            ("end",),
        ]:
            jobs.put(job)
        _Writer(jobs).run()
    transcripts = sorted(stem.parent.glob("*.transcript.jsonl"))
    assert [json.loads(p.read_text())["n"] for p in transcripts] == [1, 2]
    summaries = sorted(stem.parent.glob("*.summary.json"))
    assert [json.loads(p.read_text())["n"] for p in summaries] == [1, 2]
    assert len(list(stem.parent.glob("*.wav"))) == 2


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


def test_retention_never_follows_a_symlink_out_of_the_recordings_dir(tmp_path: Path) -> None:
    recordings, outside = tmp_path / "recordings", tmp_path / "outside"
    recordings.mkdir()
    outside.mkdir()
    precious = outside / "config.json"
    precious.write_text("{}")
    old = time.time() - 31 * 86400
    os.utime(precious, (old, old))
    (recordings / "2026-01-01").symlink_to(outside, target_is_directory=True)
    assert sweep_recordings(recordings, 30) == 0
    assert precious.exists()


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


async def test_recorded_calls_leave_trios_worker_threads_to_the_rest_of_the_server(
    tmp_path: Path,
) -> None:
    """More recorded calls than Trio's default thread limiter has tokens (40, the default
    MAX_CONCURRENT_CALLS): DNS look-ups (model and ACS REST host names) still get a thread,
    and every call's files are closed.  Real clock: worker threads."""
    tokens = trio.to_thread.current_default_thread_limiter().total_tokens
    hang_up = trio.Event()

    async def one_call(n: int, task_status: trio.TaskStatus[None]) -> None:
        handle = CallHandle(CallIds(f"call-{n}"))
        async with observe_call(handle, metrics=None, recordings_dir=tmp_path):
            handle.observer.on_start(handle.ids, trio.current_time())
            task_status.started()
            await hang_up.wait()

    async with trio.open_nursery() as nursery:
        for n in range(tokens + 1):
            await nursery.start(one_call, n)
        with trio.fail_after(5):
            # What trio.socket.getaddrinfo does for a host name: the default limiter.
            assert await trio.to_thread.run_sync(lambda: "resolved") == "resolved"
        hang_up.set()
    assert count_files(tmp_path, "*/*.summary.json") == tokens + 1


def count_files(directory: Path, pattern: str) -> int:
    return len(list(directory.glob(pattern)))


def test_retention_leaves_a_day_folder_that_is_still_current(tmp_path: Path) -> None:
    """A recording being opened has made today's folder but not yet its files: keep the folder."""
    now = time.time()
    today = tmp_path / time.strftime("%Y-%m-%d", time.gmtime(now))
    today.mkdir()
    old = tmp_path / "2020-01-01"
    old.mkdir()
    assert sweep_recordings(tmp_path, 0.5, now=now) == 0
    assert today.is_dir()
    assert not old.exists()
