"""Model audio on its way to the caller: responses, items, cuts, 20 ms framing.  Pure and sync.

Deltas arrive in arbitrary sizes, faster than real time (docs/protocols/realtime.md §3.2); the paced
sender (:mod:`acs_trio.call.playout`) wants whole frames.  This module numbers responses (so a
barge-in can cut "every response so far" in one step), owns that cut line (:class:`CutLine`,
read by the playout), drops deltas of cut responses that are still in flight, remembers per
recent item how much audio it produced and whether its fate after a cut was settled (truncated,
deleted, or heard in full), and resamples to a 16 kHz call's rate.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ..wire.realtime import MODEL_SAMPLE_RATE, AudioDelta
from .resample import Resampler

__all__ = ["AgentAudio", "CutLine", "ItemState", "OutboundFrame"]

#: Responses and items remembered; older ones can no longer be playing, so cannot be cut.
_REMEMBERED = 8
_MODEL_BYTES_PER_MS = MODEL_SAMPLE_RATE * 2 / 1000


@dataclass(frozen=True, slots=True)
class OutboundFrame:
    """One frame of agent audio at the call's sample rate."""

    #: Sequence number of the model response it belongs to (1, 2, …), assigned by the model task.
    response_seq: int
    item_id: str
    pcm: bytes
    ms: float


class CutLine:
    """Responses numbered ``<= through_seq`` were interrupted: none of their audio may play.

    One owner moves it (:meth:`AgentAudio.cut_all`); the playout only reads it.
    """

    __slots__ = ("through_seq",)

    def __init__(self) -> None:
        self.through_seq = 0

    def is_cut(self, response_seq: int) -> bool:
        return response_seq <= self.through_seq


@dataclass(slots=True)
class ItemState:
    """One assistant audio item, as the bridge knows it."""

    response_seq: int
    #: The model session it was produced in (the bridge counts sessions: reconnects, recycles).
    session: int = 0
    received_ms: float = 0.0
    #: Its audio is complete (``output_audio.done``).
    done: bool = False
    #: Its fate after a cut is decided (truncated, deleted or heard whole): act only once.
    settled: bool = False


class AgentAudio:
    """Turns ``output_audio.delta`` events into :class:`OutboundFrame` objects."""

    def __init__(self, frame_ms: int) -> None:
        self._frame_ms = frame_ms
        self._rate = MODEL_SAMPLE_RATE
        self._frame_bytes = MODEL_SAMPLE_RATE * 2 * frame_ms // 1000
        self._resampler: Resampler | None = None
        self._response_seq: OrderedDict[str, int] = OrderedDict()
        self._items: OrderedDict[str, ItemState] = OrderedDict()
        #: Sequence number of the newest response seen (1, 2, …).
        self.latest_seq = 0
        self.cut_line = CutLine()
        #: The current model session's number; items remember theirs.
        self.session = 0
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

    def item(self, response_id: str, item_id: str) -> ItemState:
        """The state of ``item_id`` (created on first sight, e.g. ``output_item.added``)."""
        state = self._items.get(item_id)
        if state is None:
            state = self._items[item_id] = ItemState(self.seq_of(response_id), self.session)
            if len(self._items) > _REMEMBERED:
                self._items.popitem(last=False)
        return state

    def cut_all(self) -> int:
        """The caller barged in: every response so far is cut.  Returns the last cut seq."""
        self.cut_line.through_seq = self.latest_seq
        self._carry, self._carry_key = b"", None
        if self._resampler is not None:
            # The filter's history is the cut answer's tail: the next answer starts clean.
            self._resampler = Resampler(MODEL_SAMPLE_RATE, self._rate)
        return self.latest_seq

    def unsettled_cut_items(self) -> list[tuple[str, ItemState]]:
        """Items of cut responses whose fate (truncate/delete/heard) is not decided yet."""
        cut = self.cut_line
        return [
            (item_id, state)
            for item_id, state in self._items.items()
            if cut.is_cut(state.response_seq) and not state.settled
        ]

    def received_ms(self, item_id: str) -> float:
        state = self._items.get(item_id)
        return 0.0 if state is None else state.received_ms

    def frames(self, delta: AudioDelta) -> list[OutboundFrame]:
        """Whole frames completed by ``delta`` (none if its response was cut)."""
        state = self.item(delta.response_id, delta.item_id)
        seq = state.response_seq
        if self.cut_line.is_cut(seq):
            return []  # a delta of an interrupted response, still in flight: never played
        item = delta.item_id
        state.received_ms += len(delta.pcm) / _MODEL_BYTES_PER_MS
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

    def unheard_items(self, session: int) -> list[str]:
        """Items of ``session`` none of whose audio arrived: the caller heard none of them."""
        return [
            item_id
            for item_id, state in self._items.items()
            if state.session == session and state.received_ms == 0
        ]

    def _frame(self, seq: int, item: str, pcm: bytes) -> OutboundFrame:
        return OutboundFrame(seq, item, pcm, len(pcm) / (self._rate * 2 / 1000))
