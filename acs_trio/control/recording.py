"""Call recordings (opt-in with ``RECORDINGS_DIR``): a stereo WAV, a transcript and a summary.

Per call, under ``RECORDINGS_DIR/<UTC date>/<UTC time>_<call id>`` (``_2``… if that is taken):

- ``.wav``: 16-bit stereo at the call's rate.  Left: the caller, bit-exact (ACS frames as
  received, concatenated; an empty "silent" frame is written as zeros, a gap of more than
  ``_GAP_S`` with no frames at all as silence).  Right: the agent **as heard**: each frame placed
  where ACS starts playing it (when it was written, or when the audio before it ends), and cut
  at the moment StopAudio was written, since ACS discards what it had not played yet.
- ``.transcript.jsonl``: one JSON object per line, ``t_ms`` relative to the call's start: the
  model's transcripts (caller and agent), the caller's speech start/stop (model VAD), times to
  first audio, barge-ins (with the audio StopAudio flushed) and tool calls.
- ``.summary.json``: the call summary (end reason, latencies, counters) and recording facts.

Nothing here blocks the event loop: the call's tasks only append to two small per-call buffers
(at most about ``_MAX_LAG_S`` + one chunk of audio each; the agent's audio reaches the recorder
when it is written to ACS, at most one playout lead ahead of real time) and hand finished
``RECORDING_CHUNK_MS`` chunks to a queue.  One worker thread per call
(``trio.to_thread.run_sync``) interleaves and writes them.  Policy when the writer falls behind
(a slow or stalled disk): once ``RECORDING_QUEUE_CHUNKS`` chunks are waiting, further chunks are
dropped, written as silence of the same length (so the two channels stay aligned), counted in
the summary (``recording_dropped_ms``) and in ``acs_trio_recording_dropped_chunks``; the call
itself never waits for the disk.  The files are closed on every ending, a crash included:
:func:`open_call_recording` is a context manager whose exit always sends the end marker and waits
(shielded, bounded) for the writer to close them.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import queue
import re
import threading
import time
import wave
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import trio

from ..call.lifecycle import CallIds, CallSummary
from ..call.observer import NullObserver
from ..config import RECORDING_CHUNK_MS, RECORDING_QUEUE_CHUNKS

__all__ = ["CallRecorder", "open_call_recording", "run_retention", "sweep_recordings"]

logger = logging.getLogger(__name__)

#: No caller frame for this long: the silence is written as zeros (else frames are concatenated).
_GAP_S = 0.5
#: The caller channel may lag real time by this much before it is padded (bounds the buffers).
_MAX_LAG_S = 1.0
#: After the call, the writer gets this long to close the files before it is abandoned.
_CLOSE_TIMEOUT_S = 10.0
#: Transcript lines kept per call (a misbehaving model cannot fill the disk through us).
_MAX_LINES = 20_000
_END = ("end",)


def _file(stem: Path, suffix: str) -> Path:
    return stem.parent / (stem.name + suffix)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80] or "call"


class CallRecorder(NullObserver):
    """One call's recorder: a :class:`~acs_trio.call.observer.CallObserver` feeding a writer."""

    def __init__(
        self,
        directory: Path,
        *,
        on_drop: Callable[[], None] | None = None,
        chunk_ms: int = RECORDING_CHUNK_MS,
        max_queued_chunks: int = RECORDING_QUEUE_CHUNKS,
    ) -> None:
        self._directory = directory
        self._on_drop = on_drop
        self._chunk_ms = chunk_ms
        self._max_queued = max_queued_chunks
        self.queue: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._t0: float | None = None
        self._rate = 24000
        self._rate_fixed = False
        self._audio_off = False
        # Sample index of the first sample not yet handed to the writer; both buffers start there.
        self._flushed = 0
        self._left = bytearray()
        self._right = bytearray()
        self._left_started = False
        self._lines = 0
        self._finished = False
        self._last_at: float | None = None
        self.dropped_ms = 0.0
        self.flushed_by_stop_ms = 0.0
        #: Where the files go (set at start): ``<stem>.wav`` etc.
        self.stem: Path | None = None

    # -- time -----------------------------------------------------------------------------------

    def _sample(self, at: float) -> int:
        return round((at - (0.0 if self._t0 is None else self._t0)) * self._rate)

    def _t_ms(self, at: float) -> int:
        return round((at - (at if self._t0 is None else self._t0)) * 1000)

    # -- hooks (the call's tasks) -----------------------------------------------------------------

    def on_start(self, ids: CallIds, started_at: float) -> None:
        self._t0 = started_at
        now = dt.datetime.now(dt.UTC)
        self.stem = (
            self._directory / now.strftime("%Y-%m-%d") / f"{now:%H%M%S}_{_safe(ids.call_id)}"
        )
        self.queue.put(("open", self.stem))
        self._line(
            started_at,
            "call_started",
            call_id=ids.call_id,
            correlation_id=ids.correlation_id,
            utc=now.isoformat(timespec="milliseconds"),
        )

    def on_audio_format(self, sample_rate: int) -> None:
        if not self._rate_fixed:
            self._rate = sample_rate
        elif sample_rate != self._rate and not self._audio_off:
            logger.warning("recording: the rate changed mid-call; audio recording stopped")
            self._audio_off = True

    def on_caller_audio(self, pcm: bytes, silent: bool, at: float) -> None:
        if self._audio_off or self._t0 is None:
            return
        self._rate_fixed = True
        if not pcm:
            if not silent:
                return
            pcm = bytes(self._rate // 50 * 2)
        left_end = self._flushed + len(self._left) // 2
        start = self._sample(at) - len(pcm) // 2
        if not self._left_started or start - left_end > _GAP_S * self._rate:
            self._left_started = True
            if start > left_end:
                self._left += bytes((start - left_end) * 2)
        self._left += pcm
        self._maybe_flush(at)

    def on_agent_audio(self, pcm: bytes, at: float) -> None:
        if self._audio_off or self._t0 is None:
            return
        self._rate_fixed = True
        self._last_at = at
        right_end = self._flushed + len(self._right) // 2
        start = self._sample(at)
        if start > right_end:
            self._right += bytes((start - right_end) * 2)
        self._right += pcm
        self._maybe_flush(at)

    def on_stop_audio(self, at: float, latency_ms: float, flushed_ms: float) -> None:
        cut = 0
        if self._t0 is not None and not self._audio_off:
            keep = max(0, self._sample(at) - self._flushed) * 2
            if len(self._right) > keep:
                cut = len(self._right) - keep
                del self._right[keep:]
        cut_ms = cut / 2 / self._rate * 1000
        self.flushed_by_stop_ms += cut_ms
        self._line(
            at,
            "barge_in",
            stop_audio_latency_ms=round(latency_ms, 1),
            flushed_ms=round(cut_ms, 1),
        )

    def on_ttfa(self, ms: float, *, greeting: bool) -> None:
        # Called right after the frame's on_agent_audio: that is the time it left.
        self._line(self._last_at, "first_audio", ms=round(ms, 1), greeting=greeting)

    def on_caller_speech(self, started: bool, at: float, *, barge_in: bool = False) -> None:
        self._line(at, "speech_started" if started else "speech_stopped", role="caller")

    def on_transcript(self, role: str, text: str, at: float, *, item_id: str) -> None:
        self._line(at, "transcript", role=role, text=text)

    def on_tool_call(self, name: str, ok: bool, duration_ms: float, at: float) -> None:
        self._line(at, "tool_call", name=name, ok=ok, duration_ms=round(duration_ms, 1))

    def on_end(self, summary: CallSummary) -> None:
        self._finish(summary.ended_at, summary.log_extra())

    # -- buffers -> writer ------------------------------------------------------------------------

    def _line(self, at: float | None, kind: str, **fields: Any) -> None:
        if self._lines >= _MAX_LINES:
            return
        self._lines += 1
        t_ms = None if at is None else self._t_ms(at)
        self.queue.put(("line", {"t_ms": t_ms, "type": kind, **fields}))

    def _maybe_flush(self, now: float) -> None:
        now_sample = self._sample(now)
        left_end = self._flushed + len(self._left) // 2
        lag = now_sample - left_end
        if lag > _MAX_LAG_S * self._rate:
            # No caller frames for a while (ACS normally sends a frame every 20 ms, silent or
            # not): pad, so the agent's buffer cannot grow while we wait.
            pad = lag - int(_GAP_S * self._rate)
            self._left += bytes(pad * 2)
            left_end += pad
        horizon = min(left_end, now_sample)
        # Caller frames faster than real time (a burst, a misbehaving peer): the caller channel
        # runs ahead of the clock; hand it over once it is _MAX_LAG_S ahead (bounds the buffer).
        horizon = max(horizon, left_end - int(_MAX_LAG_S * self._rate))
        if horizon - self._flushed >= self._rate * self._chunk_ms // 1000:
            self._emit(horizon - self._flushed)

    def _emit(self, samples: int) -> None:
        size = samples * 2
        left, right = bytes(self._left[:size]), bytes(self._right[:size])
        del self._left[:size]
        del self._right[:size]
        self._flushed += samples
        if self.queue.qsize() >= self._max_queued:
            # Policy: the disk is behind; this chunk is written as silence, and counted.
            self.dropped_ms += samples / self._rate * 1000
            self.queue.put(("gap", self._rate, samples))
            if self._on_drop is not None:
                self._on_drop()
            return
        self.queue.put(("audio", self._rate, left, right))

    def _finish(self, ended_at: float, summary: dict[str, Any]) -> None:
        """Hand over the rest of the audio, the summary and the end marker (once)."""
        if self._finished:
            return
        self._finished = True
        if self._t0 is not None and not self._audio_off:
            end = self._sample(ended_at)
            right_end = self._flushed + len(self._right) // 2
            if right_end > end:  # written but not yet played when the call ended: never heard
                del self._right[max(0, end - self._flushed) * 2 :]
            left_end = self._flushed + len(self._left) // 2
            right_end = self._flushed + len(self._right) // 2
            rest = max(left_end, right_end) - self._flushed
            if rest > 0:
                self._emit(rest)
        self._line(ended_at if self._t0 is not None else None, "call_ended", **_ending(summary))
        record = {
            **summary,
            "recording": {
                "sample_rate_hz": self._rate,
                "channels": {"left": "caller (bit-exact)", "right": "agent as heard"},
                "dropped_ms": round(self.dropped_ms, 1),
                "flushed_by_stop_audio_ms": round(self.flushed_by_stop_ms, 1),
            },
        }
        self.queue.put(("summary", record))
        self.queue.put(_END)

    def crashed(self, error: BaseException) -> None:
        """The call ended without a summary (a crash): close the files with what is known."""
        now = trio.current_time()
        self._finish(now, {"end_reason": "crashed", "end_detail": repr(error)[:500]})


def _ending(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("end_reason", "end_detail", "duration_s")
    return {key: summary[key] for key in keys if key in summary}


# -- the writer thread ------------------------------------------------------------------------------


class _Writer:
    """Runs in a worker thread: drains the queue into the three files, closes them at the end."""

    def __init__(self, jobs: queue.Queue[tuple[Any, ...]]) -> None:
        self._jobs = jobs
        self._stem: Path | None = None
        self._wav: wave.Wave_write | None = None
        self._transcript: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job[0] == "end":
                    return
                try:
                    self._do(job)
                    if self._jobs.empty() and self._transcript is not None:
                        self._transcript.flush()  # where a full disk shows (ENOSPC)
                except Exception as exc:  # a full or broken disk, or a bug: keep draining,
                    # stop writing; an exception out of this thread would cancel the live call.
                    if self.error is None:
                        self.error = exc
                        logger.error("recording %s: %r; no more writes", self._stem, exc)
        finally:
            self._close()
            self.done.set()

    def _do(self, job: tuple[Any, ...]) -> None:
        if self.error is not None:
            return
        kind = job[0]
        if kind == "open":
            stem: Path = job[1]
            stem.parent.mkdir(parents=True, exist_ok=True)
            # A stem of our own ("x"): the same call id can be recorded twice within a second
            # (ACS re-established its media socket); the second never overwrites the first.
            for n in itertools.count(2):
                try:
                    # backslashreplace: a lone surrogate (valid JSON text, not UTF-8) is
                    # written as its JSON escape instead of killing the writer.
                    self._transcript = open(  # noqa: SIM115 - closed in _close()
                        _file(stem, ".transcript.jsonl"),
                        "x",
                        encoding="utf-8",
                        errors="backslashreplace",
                    )
                    break
                except FileExistsError:
                    stem = job[1].with_name(f"{job[1].name}_{n}")
            self._stem = stem
        elif kind == "line" and self._transcript is not None:
            self._transcript.write(json.dumps(job[1], ensure_ascii=False) + "\n")
        elif kind in {"audio", "gap"} and self._stem is not None:
            rate = job[1]
            if self._wav is None:
                self._wav = wave.open(str(_file(self._stem, ".wav")), "wb")  # noqa: SIM115
                self._wav.setnchannels(2)
                self._wav.setsampwidth(2)
                self._wav.setframerate(rate)
            if kind == "gap":
                self._wav.writeframes(bytes(job[2] * 4))
            else:
                self._wav.writeframes(_interleave(job[2], job[3]))
        elif kind == "summary" and self._stem is not None:
            path = _file(self._stem, ".summary.json")
            path.write_text(
                json.dumps(job[1], indent=2, ensure_ascii=False) + "\n",
                encoding="utf-8",
                errors="backslashreplace",
            )

    def _close(self) -> None:
        for name, closer in (("wav", self._wav), ("transcript", self._transcript)):
            if closer is not None:
                try:
                    closer.close()
                except OSError as exc:
                    logger.error("recording %s: closing the %s failed: %s", self._stem, name, exc)
        self._wav = self._transcript = None


def _interleave(left: bytes, right: bytes) -> bytes:
    """Two mono PCM16 channels (the shorter padded with silence) → interleaved stereo."""
    n = max(len(left), len(right)) // 2
    stereo = np.zeros((n, 2), dtype="<i2")
    stereo[: len(left) // 2, 0] = np.frombuffer(left, dtype="<i2")
    stereo[: len(right) // 2, 1] = np.frombuffer(right, dtype="<i2")
    return stereo.tobytes()


@asynccontextmanager
async def open_call_recording(
    directory: Path, *, on_drop: Callable[[], None] | None = None
) -> AsyncIterator[CallRecorder]:
    """A recorder and its writer thread for one call; the files are closed when this exits."""
    recorder = CallRecorder(directory, on_drop=on_drop)
    writer = _Writer(recorder.queue)
    # Its own threads (the writer, then the close wait), not Trio's default limiter: that has 40
    # tokens (the default MAX_CONCURRENT_CALLS) and DNS look-ups of the model's and ACS's hosts
    # wait on it, so 40 recorded calls would stall every new connect.
    threads = trio.CapacityLimiter(2)
    async with trio.open_nursery() as nursery:
        writer_scope = trio.CancelScope(shield=True)

        async def run_writer() -> None:
            with writer_scope:
                await trio.to_thread.run_sync(writer.run, abandon_on_cancel=True, limiter=threads)

        nursery.start_soon(run_writer)
        try:
            yield recorder
        except BaseException as exc:
            recorder.crashed(exc)
            raise
        finally:
            recorder.crashed(RuntimeError("recording closed without a call summary"))
            # A real-time wait (in a thread, shielded): the disk's pace, not the Trio clock's.
            with trio.CancelScope(shield=True):
                closed = await trio.to_thread.run_sync(
                    writer.done.wait, _CLOSE_TIMEOUT_S, limiter=threads
                )
            if not closed:
                logger.error(
                    "recording %s: the writer did not finish within %.0fs (disk stalled?); "
                    "abandoning it",
                    recorder.stem,
                    _CLOSE_TIMEOUT_S,
                )
                writer_scope.shield = False
                writer_scope.cancel()


# -- retention --------------------------------------------------------------------------------------


def sweep_recordings(directory: Path, max_age_days: float, *, now: float | None = None) -> int:
    """Delete recording files older than ``max_age_days`` (and empty day folders); a count."""
    if max_age_days <= 0 or not directory.is_dir():
        return 0
    cutoff = (time.time() if now is None else now) - max_age_days * 86400
    removed = 0
    for day in directory.iterdir():
        if (
            day.is_symlink()  # never follow a link out of the recordings directory
            or not day.is_dir()
            or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day.name)
        ):
            continue  # only folders this module made
        for path in day.iterdir():
            if path.suffix in {".wav", ".jsonl", ".json"} and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
        # An empty folder goes only once its whole day is past the cutoff: today's folder may be
        # empty because a recording is being opened in it right now (mkdir, then open).
        day_ends = dt.datetime.strptime(day.name, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp()
        if day_ends + 86400 < cutoff and not any(day.iterdir()):
            day.rmdir()
    return removed


async def run_retention(directory: Path, max_age_days: float, interval_s: float) -> None:
    """Sweep now and every ``interval_s`` (in a worker thread); never raises but Cancelled."""
    if max_age_days <= 0:
        return
    while True:
        try:
            removed = await trio.to_thread.run_sync(sweep_recordings, directory, max_age_days)
        except OSError as exc:
            logger.error("recordings retention sweep of %s failed: %s", directory, exc)
        else:
            if removed:
                logger.info(
                    "recordings: deleted %d file(s) older than %g days", removed, max_age_days
                )
        await trio.sleep(interval_s)
