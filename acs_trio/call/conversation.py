"""The call's conversation as the caller experienced it: what a new model session is told.

A model session can end before the call does (a dropped socket, a rate limit, the session's
time limit).  The next session starts empty, so the bridge keeps this log and replays it as text
``conversation.item.create`` items (docs/protocols/realtime.md §2.4): the caller's turns as ``user``
``input_text`` items (from input transcription), the agent's as ``assistant`` ``output_text``
items, *as heard*.  Pure and sync.

"As heard": when the caller barged in, the agent item was truncated at the played ms; its
transcript is cut in the same proportion (heard ms / ms of audio received), at a word boundary,
and marked with "…".  The server does not send the truncated transcript back (``truncated`` has
no text), and the proportional cut is what the server does too ("removes the unplayed portion",
§5), up to the model's uneven speaking rate.  An item of which nothing was heard is dropped.

Function calls are replayed too (docs/tools.md, "Across model sessions"): each call the model
made is a client-created ``function_call`` item (``call_id``, ``name``, ``arguments``), followed
at once by its ``function_call_output`` when that output had been written to a session.  The
server accepts an output only for a ``call_id`` in its conversation, so a tool still running when
the session is replaced sends its output later to a session that knows the call.  A call and its
output are one entry: the character budget keeps or drops them together.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..wire import realtime as rt

__all__ = ["Conversation"]

#: Entries kept (a bound on memory, independent of the replay's character budget).
_MAX_ENTRIES = 200


@dataclass(slots=True)
class _Entry:
    role: str  # "user" | "assistant"
    text: str = ""
    #: Fraction of the item's audio the caller heard (1.0 unless a barge-in cut it).
    heard: float = 1.0

    def as_heard(self) -> str:
        text = self.text.strip()
        if self.heard >= 1.0 or not text:
            return text
        keep = text[: int(len(text) * self.heard)]
        if " " in keep and not text[len(keep) : len(keep) + 1].isspace():
            keep = keep[: keep.rindex(" ")]
        keep = keep.rstrip()
        return keep + "…" if keep else ""


@dataclass(slots=True)
class _Call:
    """A function call the model made, and its output once written to a session."""

    call_id: str
    name: str
    arguments: str
    output: str | None = None

    def size(self) -> int:
        return len(self.name) + len(self.arguments) + len(self.output or "")


class Conversation:
    """Ordered log of caller and agent items, keyed by the model's item ids."""

    def __init__(self, max_chars: int) -> None:
        self._max_chars = max_chars
        self._entries: OrderedDict[str, _Entry | _Call] = OrderedDict()

    def _entry(self, item_id: str, role: str) -> _Entry:
        entry = self._entries.get(item_id)
        if not isinstance(entry, _Entry):
            entry = self._entries[item_id] = _Entry(role)
            if len(self._entries) > _MAX_ENTRIES:
                self._entries.popitem(last=False)
        return entry

    # --- what happened -------------------------------------------------------------------------

    def caller_turn(self, item_id: str) -> None:
        """The caller started a turn (``speech_started``): its place in the order."""
        if item_id:
            self._entry(item_id, "user")

    def caller_said(self, item_id: str, transcript: str) -> None:
        self._entry(item_id, "user").text = transcript

    def agent_item(self, item_id: str) -> None:
        self._entry(item_id, "assistant")

    def agent_delta(self, item_id: str, delta: str) -> None:
        self._entry(item_id, "assistant").text += delta

    def agent_said(self, item_id: str, transcript: str) -> None:
        self._entry(item_id, "assistant").text = transcript

    def heard(self, item_id: str, fraction: float) -> None:
        """A barge-in cut this agent item after ``fraction`` of its audio."""
        entry = self._entries.get(item_id)
        if isinstance(entry, _Entry):
            entry.heard = max(0.0, min(1.0, fraction))

    def function_call(self, call_id: str, name: str, arguments: str) -> None:
        """The model called a function (announced twice by GA: kept once, in first place)."""
        key = _call_key(call_id)
        if key not in self._entries:
            self._entries[key] = _Call(call_id, name, arguments)
            if len(self._entries) > _MAX_ENTRIES:
                self._entries.popitem(last=False)

    def function_output(self, call_id: str, output: str) -> None:
        """The call's output was written to a session."""
        entry = self._entries.get(_call_key(call_id))
        if isinstance(entry, _Call):
            entry.output = output

    def forget(self, item_id: str) -> None:
        """Nothing of it was heard: as if it had never been said."""
        self._entries.pop(item_id, None)

    # --- the replay ------------------------------------------------------------------------------

    def _kept(self) -> list[_Entry | _Call]:
        """What fits the character budget, newest kept, oldest first."""
        out: list[_Entry | _Call] = []
        budget = self._max_chars
        for entry in reversed(self._entries.values()):
            size = entry.size() if isinstance(entry, _Call) else len(entry.as_heard())
            if isinstance(entry, _Entry) and not size:
                continue
            if size > budget:
                break
            budget -= size
            out.append(entry)
        out.reverse()
        return out

    def texts(self) -> list[tuple[str, str]]:
        """``(role, text)`` to replay, oldest first, within the character budget (newest kept)."""
        return [(e.role, e.as_heard()) for e in self._kept() if isinstance(e, _Entry)]

    def replay(self, next_event_id: Callable[[], str]) -> list[str]:
        """The ``conversation.item.create`` events that seed a new session with this log."""
        events: list[str] = []
        for entry in self._kept():
            if isinstance(entry, _Entry):
                events.append(rt.message_item(entry.role, entry.as_heard(), next_event_id()))
                continue
            events.append(
                rt.function_call_item(entry.call_id, entry.name, entry.arguments, next_event_id())
            )
            if entry.output is not None:
                events.append(rt.function_call_output(entry.call_id, entry.output))
        return events


def _call_key(call_id: str) -> str:
    return f"function_call:{call_id}"
