"""Where a call keeps "the conversation so far", so another session or process can resume it.

The bridge records each finished transcript (the caller's, from input transcription, and the
agent's, from the output transcript) and, when a call starts with a non-empty history (its media
socket was re-established on another instance after the first one died), replays the history into
the new model session as conversation items instead of greeting the caller again.

This is the seam only: a single process keeps nothing (``CallHandle.conversation`` is ``None``);
with ``REDIS_URL`` the control plane attaches a store backed by Redis
(:mod:`acs_trio.control.redis_state`).  ``record`` never blocks the call: an implementation queues
and writes in the background.
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

    def record(self, turn: Turn) -> None:
        """Remember one turn.  Must not block or raise: the call goes on whatever happens."""
        ...
