"""The media WebSocket as ACS drives it: a real-time sender of caller audio and a recorder.

ACS is the WebSocket *client* (docs/protocols/acs.md §4.1).  It sends ``AudioMetadata`` first, then one
``AudioData`` every 20 ms for the whole call, silent or not (§4.2, §4.3).  :class:`MediaLink`
does the same on absolute deadlines (``start + n × 20 ms``) so it never drifts, and records what
the server sends back through the :class:`~.audio.PlayoutTrack` playout model.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from .audio import FRAME_S, Clip, PlayoutTrack, Samples, frames_of, is_silent
from .report import CallReport
from .wire import AudioFrameEncoder, WallClock, audio_metadata, parse_outbound

__all__ = ["MediaLink", "PreparedClip", "prepare_clip"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedClip:
    """A clip cut into frames whose JSON tails are encoded once, ahead of the real-time loop."""

    samples: list[Samples]
    tails: list[str]
    silent: list[bool]

    @property
    def first_voiced(self) -> int:
        """Index of the first non-silent frame (0 if none): where the caller's speech starts."""
        return next((i for i, quiet in enumerate(self.silent) if not quiet), 0)

    def without_leading_silence(self) -> PreparedClip:
        """The same clip starting at its first voiced frame (a barge-in starts talking at once)."""
        i = self.first_voiced
        return PreparedClip(self.samples[i:], self.tails[i:], self.silent[i:])

    @property
    def last_voiced(self) -> int:
        """Index of the last non-silent frame (-1 if none): where the caller's speech ends."""
        return max((i for i, quiet in enumerate(self.silent) if not quiet), default=-1)


def prepare_clip(clip: Clip, encoder: AudioFrameEncoder, threshold_rms: float) -> PreparedClip:
    """Frames below the energy threshold go out as ``silent: true`` with all-zero data, like ACS."""
    samples, tails, silent = [], [], []
    for frame in frames_of(clip):
        quiet = is_silent(frame, threshold_rms)
        frame = np.zeros_like(frame) if quiet else frame
        samples.append(frame)
        tails.append(encoder.tail(frame.astype("<i2").tobytes(), silent=quiet))
        silent.append(quiet)
    return PreparedClip(samples, tails, silent)


@dataclass
class _Playing:
    clip: PreparedClip
    #: Set once the last voiced frame is on the wire (or at the end of an all-silent clip).
    speech_done: trio.Event = field(default_factory=trio.Event)
    position: int = 0
    started_at: float = 0.0
    speech_end_at: float = 0.0


class MediaLink:
    """One call's media socket.  Run :meth:`send_loop` and :meth:`receive_loop` as siblings."""

    def __init__(
        self,
        ws: WebSocketConnection,
        *,
        rate: int,
        subscription_id: str,
        encoder: AudioFrameEncoder,
        clock: WallClock,
        report: CallReport,
        opened_at: float,
        on_event: Callable[[str], None] = lambda _text: None,
    ) -> None:
        self.ws = ws
        self.rate = rate
        self.report = report
        self.opened_at = opened_at
        self.track = PlayoutTrack(rate)
        self.caller_frames: list[Samples] = []
        #: When the send loop's first frame went out (call timeline, s).
        self.stream_start_s = 0.0
        #: Arrival times (call timeline, s) of every AudioData, in order.
        self.audio_s: list[float] = []
        self.last_audio_s: float | None = None
        self.closed_by_us = False
        self._subscription_id = subscription_id
        self._encoder = encoder
        self._clock = clock
        self._on_event = on_event
        self._silence = np.zeros(rate // 50, dtype=np.int16)
        self._silence_tail = encoder.tail(self._silence.tobytes(), silent=True)
        self._queue_send, self._queue_receive = trio.open_memory_channel[_Playing](1)
        self._changed = trio.Event()

    def now_s(self) -> float:
        """Seconds since the media socket opened: the call timeline of the report."""
        return trio.current_time() - self.opened_at

    # -- sending -----------------------------------------------------------------------------

    async def play(self, clip: PreparedClip) -> tuple[float, float]:
        """Stream ``clip`` in place of silence; return when its speech has been sent.

        Returns the call-timeline times of its first and last voiced frames (speech start and
        end); the clip's trailing silence keeps streaming while the caller of ``play`` goes on.
        """
        playing = _Playing(clip)
        await self._queue_send.send(playing)
        await playing.speech_done.wait()
        return playing.started_at, playing.speech_end_at

    async def send_loop(self) -> None:
        """AudioMetadata, then a frame every 20 ms until cancelled or the socket closes."""
        await self.ws.send_message(
            audio_metadata(subscription_id=self._subscription_id, sample_rate=self.rate)
        )
        start = trio.current_time()
        self.stream_start_s = start - self.opened_at
        current: _Playing | None = None
        n = 0
        while True:
            deadline = start + n * FRAME_S
            await trio.sleep_until(deadline)
            if current is None:
                with contextlib.suppress(trio.WouldBlock):
                    current = self._queue_receive.receive_nowait()
            if current is None:
                samples, tail, silent = self._silence, self._silence_tail, True
            else:
                i = current.position
                samples, tail = current.clip.samples[i], current.clip.tails[i]
                silent = current.clip.silent[i]
            # The AudioData timestamp must be a real ISO-8601 UTC wall-clock string (§4.2);
            # WallClock derives it from the Trio clock anchored on one wall-clock reading.
            await self.ws.send_message(self._encoder.message(self._clock.audio(deadline), tail))
            self.caller_frames.append(samples)
            self.report.frames_sent += 1
            self.report.silent_frames_sent += silent
            if current is not None:
                sent_at = deadline - self.opened_at
                if current.position == current.clip.first_voiced:
                    current.started_at = sent_at
                if (
                    current.position >= current.clip.last_voiced
                    and not current.speech_done.is_set()
                ):
                    current.speech_end_at = sent_at
                    current.speech_done.set()
                current.position += 1
                if current.position == len(current.clip.tails):
                    current = None
            n += 1

    # -- receiving ---------------------------------------------------------------------------

    async def receive_loop(self) -> None:
        """Record everything the server sends until the socket closes (either side)."""
        try:
            while True:
                message = await self.ws.get_message()
                self._record(message)
                self._notify()
        except ConnectionClosed as exc:
            if exc.reason is not None:
                self.report.close_code = exc.reason.code
                self.report.close_reason = exc.reason.reason or ""
        finally:
            self._notify()

    def _record(self, message: str | bytes) -> None:
        t = self.now_s()
        out = parse_outbound(message)
        report = self.report
        report.shapes[out.shape] = report.shapes.get(out.shape, 0) + 1
        if out.shape != "documented":
            report.deviation(f"{out.kind} not in the documented §4.4 shape ({out.shape})")
        if out.problem:
            report.deviation(out.problem)
        if out.kind == "AudioData" and out.pcm:
            if report.greeting_first_audio_s is None:
                report.greeting_first_audio_s = round(t, 3)
            report.frames_received += 1
            self.track.add(t, out.pcm)
            self.audio_s.append(t)
            self.last_audio_s = t
        elif out.kind == "StopAudio":
            report.stop_audio_s.append(t)
            flushed = self.track.stop(t)
            self._on_event(f"StopAudio at {t:.2f} s (flushed {flushed:.0f} ms of queued audio)")
        elif out.kind == "unknown":
            report.unknown_messages += 1
            logger.info(
                "call %s: unknown message from server: %.200r", report.call_connection_id, message
            )

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- waiting on what the server does -------------------------------------------------------

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds; re-checked after every message from the server."""
        while not condition():
            await self._changed.wait()

    async def wait_played_out(self, quiet_s: float) -> None:
        """Return once all queued agent audio has played and none arrived for ``quiet_s``."""
        while True:
            last = self.last_audio_s if self.last_audio_s is not None else -quiet_s
            ready_at = self.opened_at + max(last + quiet_s, self.track.play_end_s)
            if trio.current_time() >= ready_at:
                return
            changed = self._changed
            with trio.move_on_at(ready_at):
                await changed.wait()

    async def hang_up(self, reason: str) -> None:
        """Close the socket with 1000 as a caller hanging up does; bounded, shielded."""
        self.closed_by_us = True
        with trio.move_on_after(2.0, shield=True):
            await self.ws.aclose(code=1000, reason=reason)
