"""Keypad tones (``DtmfData``, docs/protocols/acs.md §4.2) collected into one entry for the model.

Tones arrive one message per key.  An entry ends when the terminator (``#`` by default) is pressed
(it is kept, so the model sees ``123#``), when no key comes for the inter-digit timeout, or when it
reaches ``max_digits``; it then goes to the model as one user text item naming the keys in order,
followed by ``response.create`` (the call's :class:`~acs_trio.call.tool_runner.ToolRunner` decides
when).  Unknown tones are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import trio

__all__ = ["KEYPAD_TONES", "DtmfCollector", "dtmf_text"]

#: Tones ACS reports: 0-9, ``*``, ``#`` and A-D (docs/protocols/acs.md §4.2 gives ``"data": "3"``).
KEYPAD_TONES = frozenset("0123456789*#ABCD")
#: Spelled-out tone names some senders use, mapped to the key.
_NAMED = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "asterisk": "*", "star": "*", "pound": "#",
    "hash": "#", "a": "A", "b": "B", "c": "C", "d": "D",
}  # fmt: skip


def normalise_tone(tone: str) -> str | None:
    """``"3"``/``"three"`` → ``"3"``; None for anything that is not one keypad key."""
    if tone in KEYPAD_TONES:
        return tone
    return _NAMED.get(tone.strip().lower())


def dtmf_text(keys: str) -> str:
    """The user text item for one entry."""
    return f"[The caller pressed these keys on the phone keypad, in order: {keys}]"


class DtmfCollector:
    """One call's keypad entry in progress.  ``push`` from the ACS task; ``run`` is the timer."""

    def __init__(
        self,
        *,
        inter_digit_timeout_s: float,
        terminator: str,
        max_digits: int,
        send: Callable[[str], Awaitable[None]],
    ) -> None:
        self._timeout_s = inter_digit_timeout_s
        self._terminator = terminator
        self._max_digits = max_digits
        self._send = send
        self._keys = ""
        self._deadline = math.inf
        self._timer: trio.CancelScope | None = None

    async def push(self, tone: str) -> bool:
        """Add one tone; sends the entry if it is complete.  False if the tone is not a key."""
        key = normalise_tone(tone)
        if key is None:
            return False
        self._keys += key
        if key == self._terminator or len(self._keys) >= self._max_digits:
            await self._flush()
        else:
            self._set_deadline(trio.current_time() + self._timeout_s)
        return True

    async def run(self) -> None:
        """Sends an entry when the inter-digit timeout passes; runs until cancelled."""
        while True:
            with trio.CancelScope(deadline=self._deadline) as self._timer:
                await trio.sleep_forever()
            self._timer = None
            if self._keys and trio.current_time() >= self._deadline:
                await self._flush()

    def _set_deadline(self, deadline: float) -> None:
        self._deadline = deadline
        if self._timer is not None:
            self._timer.deadline = deadline

    async def _flush(self) -> None:
        keys, self._keys = self._keys, ""
        self._set_deadline(math.inf)
        if keys:
            await self._send(keys)
