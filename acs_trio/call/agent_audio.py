"""Model audio on its way to the caller: responses, cuts, 20 ms framing.  Pure and sync.

Deltas arrive in arbitrary sizes, faster than real time (docs/protocols/realtime.md §3.2); the paced
sender (:mod:`acs_trio.call.playout`) wants whole frames.  This module numbers responses (so a barge-in
can cut "every response so far" in one step), drops deltas of cut responses that are still in
flight, remembers how much audio each recent item produced (to clamp a truncate), and resamples to a
16 kHz call's rate.
"""

from __future__ import annotations

from collections import OrderedDict

from ..wire.realtime import MODEL_SAMPLE_RATE, AudioDelta
from .playout import OutboundFrame
from .resample import Resampler

__all__ = ["AgentAudio"]

#: Responses and items remembered; older ones can no longer be playing, so cannot be cut.
_REMEMBERED = 8
_MODEL_BYTES_PER_MS = MODEL_SAMPLE_RATE * 2 / 1000


class AgentAudio:
    """Turns ``output_audio.delta`` events into :class:`OutboundFrame` objects."""

    def __init__(self, frame_ms: int) -> None:
        self._frame_ms = frame_ms
        self._rate = MODEL_SAMPLE_RATE
        self._frame_bytes = MODEL_SAMPLE_RATE * 2 * frame_ms // 1000
        self._resampler: Resampler | None = None
        self._response_seq: OrderedDict[str, int] = OrderedDict()
        self._received_ms: OrderedDict[str, float] = OrderedDict()
        #: Sequence number of the newest response seen (1, 2, …).
        self.latest_seq = 0
        self._cut_through_seq = 0
        self._carry = b""
        self._carry_key: tuple[int, str] | None = None

    def set_rate(self, sample_rate: int) -> None:
        """The call's rate (from AudioMetadata); audio for ACS is resampled to it."""
        self._rate = sample_rate
        self._frame_bytes = sample_rate * 2 * self._frame_ms // 1000
        same = sample_rate == MODEL_SAMPLE_RATE
        self._resampler = None if same else Resampler(MODEL_SAMPLE_RATE, sample_rate)

    def seq_of(self, response_id: str) -> int:
        seq = self._response_seq.get(response_id)
        if seq is None:
            self.latest_seq = seq = self.latest_seq + 1
            self._response_seq[response_id] = seq
            if len(self._response_seq) > _REMEMBERED:
                self._response_seq.popitem(last=False)
        return seq

    def cut_all(self) -> int:
        """The caller barged in: every response so far is cut.  Returns the last cut seq."""
        self._cut_through_seq = self.latest_seq
        self._carry, self._carry_key = b"", None
        return self.latest_seq

    def received_ms(self, item_id: str) -> float:
        return self._received_ms.get(item_id, 0.0)

    def frames(self, delta: AudioDelta) -> list[OutboundFrame]:
        """Whole frames completed by ``delta`` (none if its response was cut)."""
        seq = self.seq_of(delta.response_id)
        if seq <= self._cut_through_seq:
            return []  # a delta of an interrupted response, still in flight: never played
        item = delta.item_id
        self._received_ms[item] = self.received_ms(item) + len(delta.pcm) / _MODEL_BYTES_PER_MS
        if len(self._received_ms) > _REMEMBERED:
            self._received_ms.popitem(last=False)
        pcm = delta.pcm if self._resampler is None else self._resampler.process(delta.pcm)
        key = (seq, item)
        frames = [] if self._carry_key == key else self.flush()
        self._carry_key = key
        buffer = self._carry + pcm if self._carry else pcm
        size = self._frame_bytes
        whole = len(buffer) - len(buffer) % size
        frames.extend(
            self._frame(seq, item, buffer[at : at + size]) for at in range(0, whole, size)
        )
        self._carry = buffer[whole:]
        return frames

    def flush(self) -> list[OutboundFrame]:
        """The last, partial frame of the current item (its audio is done)."""
        frames = []
        if self._carry and self._carry_key is not None:
            frames.append(self._frame(*self._carry_key, self._carry))
        self._carry, self._carry_key = b"", None
        return frames

    def _frame(self, seq: int, item: str, pcm: bytes) -> OutboundFrame:
        return OutboundFrame(seq, item, pcm, len(pcm) / (self._rate * 2 / 1000))
