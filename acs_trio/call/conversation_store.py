"""Where a call keeps "the conversation so far", so another session or process can resume it.

The bridge keeps the conversation as the caller heard it (:mod:`acs_trio.call.conversation`, the
replay log of the model session) and hands a copy to this store whenever it changes (a transcript
arrived, a barge-in cut an answer).  When a call starts with a non-empty history (its media socket
was re-established on another instance after the first one died), the bridge seeds its replay log
with it and opens the model session with a replay instead of greeting the caller again.

This is the seam only: a single process keeps nothing (``CallHandle.conversation`` is ``None``);
with ``REDIS_URL`` the control plane attaches a store backed by Redis
(:mod:`acs_trio.control.redis_state`).  ``save`` never blocks the call: an implementation keeps the
newest copy and writes it in the background.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["ConversationStore", "Turn"]


@dataclass(frozen=True)
class Turn:
    """One finished utterance: ``user`` is the caller, ``assistant`` the agent (as transcribed)."""

    role: Literal["user", "assistant"]
    text: str


class ConversationStore(Protocol):
    def history(self) -> Sequence[Turn]:
        """The turns recorded before this call (or session) started, oldest first."""
        ...

    def save(self, turns: Sequence[Turn]) -> None:
        """The conversation so far, replacing the last copy.  Must not block or raise."""
        ...
