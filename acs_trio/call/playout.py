"""The one task that writes to the ACS media socket: paced agent audio and StopAudio.

Why pace at all?  ACS queues whatever we send and plays it in order (docs/protocols/acs.md §4.4); the
model sends its answer faster than real time (docs/protocols/realtime.md §3).  Forwarding unpaced would
put seconds of audio into ACS's queue, so "ms sent" would say nothing about "ms heard", and the
truncate after a barge-in would be a guess.  Writing 20 ms frames at real-time pace, at most
``playout_lead_ms`` ahead, keeps ACS's queue short and makes ``sent`` an upper bound of ``heard``
that is at most one lead away from it.

Barge-in is synchronous: :meth:`Playout.interrupt` is called from the model task the moment
``speech_started`` arrives, right after :meth:`AgentAudio.cut_all` moved the cut line (which
this task only reads: frames of cut responses still in flight are dropped on arrival).  In one
step, with no checkpoint in between, it drains every queued frame, wakes this task if it is
waiting, and returns how many ms of each recent item were *played*: every frame written gets its
slot on the playout clock (it starts when the previous one ends, or when written if ACS's queue
had run dry), and what is still queued at ACS at the cut is flushed by the ``StopAudio`` and was
never heard.  This task then writes ``StopAudio`` before anything else.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import trio

from ..errors import MediaClosed
from ..wire.acs_media import STOP_AUDIO, encode_audio_data
from .agent_audio import CutLine, OutboundFrame
from .lifecycle import CallSummary
from .media_socket import MediaSocket
from .observer import NULL_OBSERVER, CallObserver

__all__ = ["Interruption", "OutboundFrame", "Playout"]

T = TypeVar("T")

#: Items whose playout slots are remembered (more than AgentAudio remembers, so every item the
#: bridge may still cut has its record here).
_ITEMS_REMEMBERED = 32


@dataclass(frozen=True, slots=True)
class Interruption:
    """What a barge-in cut."""

    #: ms of each recently written item that the caller heard (played before the cut).
    played_ms: dict[str, float]
    #: ms that were sent to ACS but not yet played: flushed by the StopAudio.
    flushed_ms: float
    dropped_frames: int


class _ItemSlots:
    """When an item's frames play on the playout clock: runs of back-to-back frames."""

    __slots__ = ("runs",)

    def __init__(self) -> None:
        self.runs: list[list[float]] = []  # [start, end] in trio time

    def add(self, start: float, end: float) -> None:
        if self.runs and self.runs[-1][1] == start:
            self.runs[-1][1] = end
        else:
            self.runs.append([start, end])

    def played_ms(self, now: float) -> float:
        return sum(max(0.0, min(now, end) - start) for start, end in self.runs) * 1000

    def cut(self, now: float) -> None:
        """StopAudio at ``now``: nothing after it plays."""
        self.runs = [[start, min(end, now)] for start, end in self.runs if start < now]


class Playout:
    """Owns the receive side of the outbound frame channel and the ACS socket's send side."""

    def __init__(
        self,
        media: MediaSocket,
        frames: trio.MemoryReceiveChannel[OutboundFrame],
        summary: CallSummary,
        *,
        lead_ms: int,
        cut_line: CutLine | None = None,
        observer: CallObserver = NULL_OBSERVER,
    ) -> None:
        self._media = media
        self._frames = frames
        self._summary = summary
        self._lead_s = lead_ms / 1000
        # When ACS will have played everything sent so far (our estimate); nothing sent yet.
        self._playout_end = float("-inf")
        self._cut = CutLine() if cut_line is None else cut_line
        self._stop_since: float | None = None
        self._wait_scope: trio.CancelScope | None = None
        self._items: OrderedDict[str, _ItemSlots] = OrderedDict()
        self._answer_wait: tuple[float, int] | None = None
        self._greeting_since: float | None = None
        #: trio time of the last frame written; the idle watchdog reads it.
        self.last_write = 0.0
        #: Set when a write found the ACS socket closed (the caller hung up mid-playout).
        self.media_closed = False
        self._observer = observer
        #: Audio written but not yet played (estimate) when the last barge-in cut it, ms.
        self._flushed_ms = 0.0
        # A frame taken from the channel and not yet written (wait_played_out counts it).
        self._holding = False
        self._frame_s = 0.02

    # --- called from the model task (synchronous: no checkpoint, so no interleaving) ---------

    def expect_greeting(self, since: float) -> None:
        self._greeting_since = since

    def expect_answer(self, since: float, after_seq: int) -> None:
        """The caller's turn ended at ``since``; a later response's first frame is the answer."""
        self._answer_wait = (since, after_seq)

    def playing(self, now: float) -> bool:
        """Agent audio may be audible at ``now``, or frames are queued for the caller."""
        return (
            now < self._playout_end + self._lead_s
            or self._frames.statistics().current_buffer_used > 0
        )

    def played_ms(self, item_id: str, now: float) -> float:
        slots = self._items.get(item_id)
        return 0.0 if slots is None else slots.played_ms(now)

    def interrupt(self) -> Interruption | None:
        """The caller started speaking: stop all agent audio of the cut responses.

        Returns None when nothing was audible or queued (no barge-in), else what was cut.  Also
        None once :meth:`run` has ended (the call is ending: caller speech that starts just then
        is no barge-in, and must not turn the call's real end into an internal error).
        """
        now = trio.current_time()
        dropped = 0
        while True:
            try:
                self._frames.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            except trio.ClosedResourceError:  # run() has exited and closed its channel
                return None
            dropped += 1
        self._summary.frames_dropped_barge_in += dropped
        # ACS may still be playing up to one lead past our estimate of its queue's end.
        playing = now < self._playout_end + self._lead_s
        if not playing and dropped == 0:
            return None
        flushed_ms = max(0.0, self._playout_end - now) * 1000
        played = {}
        for item_id, slots in self._items.items():
            slots.cut(now)
            played[item_id] = slots.played_ms(now)
        self._stop_since = now
        self._flushed_ms = flushed_ms
        self._playout_end = now
        if self._wait_scope is not None:
            self._wait_scope.cancel()
        return Interruption(played, flushed_ms, dropped)

    async def wait_played_out(self) -> None:
        """Return when every frame queued so far has been written and ACS has played it.

        "Played" is the playout clock: the last written frame ends at ``_playout_end`` (writes are
        paced, so ACS's queue is at most one lead long).  A barge-in ends the wait at once.
        """
        while True:
            now = trio.current_time()
            pending = self._frames.statistics().current_buffer_used > 0 or self._holding
            if not pending and now >= self._playout_end:
                return
            # While frames are pending the next write is due one lead before the queue's end;
            # once none is, the last frame has played at _playout_end exactly.
            step = self._frame_s if pending else 0.0
            await trio.sleep_until(max(self._playout_end, now + step))

    # --- the task ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Write frames until the producer closes the channel or the ACS socket is closed.

        A closed socket is how a hang-up looks from the sending side; it ends this task quietly
        (``media_closed`` tells the call why) rather than as a crash.
        """
        try:
            await self._run()
        except MediaClosed:
            self.media_closed = True

    async def _run(self) -> None:
        with self._frames:
            while True:
                self._holding = False
                if self._stop_since is not None:
                    await self._write_stop_audio()
                    continue
                # Hot path (docs/performance.md, "Earlier measurements": cost follows scheduler round-trips): a queued
                # frame is taken without a wait, and only an early frame sleeps.  Every path
                # that writes checkpoints in media.send().
                try:
                    frame = await self._next_frame()
                except trio.EndOfChannel:
                    return
                if frame is None:  # woken by interrupt()
                    continue
                self._holding = True
                if self._cut.is_cut(frame.response_seq):
                    self._summary.frames_dropped_barge_in += 1
                    continue
                due = self._playout_end - self._lead_s
                if due > trio.current_time():
                    await self._wait(partial(trio.sleep_until, due))
                    if self._cut.is_cut(frame.response_seq):  # cut while we waited
                        self._summary.frames_dropped_barge_in += 1
                        continue
                await self._write_frame(frame)

    async def _next_frame(self) -> OutboundFrame | None:
        try:
            return self._frames.receive_nowait()
        except trio.WouldBlock:
            return await self._wait(self._frames.receive)

    async def _wait(self, wait: Callable[[], Awaitable[T]]) -> T | None:
        """Await ``wait()`` in a scope that :meth:`interrupt` cancels; None if it did.

        Raises:
            trio.EndOfChannel: from ``receive`` when the producer is gone (ends :meth:`run`).
        """
        with trio.CancelScope() as self._wait_scope:
            try:
                return await wait()
            finally:
                self._wait_scope = None
        return None

    async def _write_frame(self, frame: OutboundFrame) -> None:
        # Its slot is booked before the write: once we start writing, ACS may play it.
        start = max(self._playout_end, trio.current_time())
        self._playout_end = start + frame.ms / 1000
        slots = self._items.get(frame.item_id)
        if slots is None:
            slots = self._items[frame.item_id] = _ItemSlots()
            if len(self._items) > _ITEMS_REMEMBERED:
                self._items.popitem(last=False)
        slots.add(start, self._playout_end)
        await self._media.send(encode_audio_data(frame.pcm))
        self._observer.on_agent_audio(frame.pcm, start)
        written = trio.current_time()
        self.last_write = written
        summary = self._summary
        summary.frames_out += 1
        if self._greeting_since is not None:
            summary.greeting_ttfa_ms = (written - self._greeting_since) * 1000
            self._greeting_since = None
            self._observer.on_ttfa(summary.greeting_ttfa_ms, greeting=True)
        if self._answer_wait is not None and frame.response_seq > self._answer_wait[1]:
            summary.ttfa_ms.append((written - self._answer_wait[0]) * 1000)
            self._answer_wait = None
            self._observer.on_ttfa(summary.ttfa_ms[-1], greeting=False)

    async def _write_stop_audio(self) -> None:
        assert self._stop_since is not None
        since, self._stop_since = self._stop_since, None
        await self._media.send(STOP_AUDIO)
        now = trio.current_time()
        latency_ms = (now - since) * 1000
        self._summary.barge_in_latency_ms.append(latency_ms)
        self._observer.on_stop_audio(now, latency_ms, self._flushed_ms)
