"""Attacker-controlled text in log lines: bounded and escaped.

Webhook fields (event ids, caller numbers, correlation ids, event types) come from the network.
``%s`` would let a ``"+1\\nFAKE LOG LINE"`` forge a line and a 1 MB value flood the log; logging
:func:`clip` of them (a ``repr`` of at most ``limit`` characters) keeps every field on its line
and short.
"""

from __future__ import annotations

import re

__all__ = ["clip", "id_chars"]

_NOT_ID = re.compile(r"[^A-Za-z0-9._:+-]")

#: Characters of an untrusted value kept in a log line.
CLIP_CHARS = 80


def clip(value: object, limit: int = CLIP_CHARS) -> str:
    """``repr`` of ``value`` (as text) cut to ``limit`` characters: quotes and escapes included."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return repr(text[:limit]) + f"…(+{len(text) - limit})"
    return repr(text)


def id_chars(value: str, limit: int = 64) -> str:
    """An identifier fit for every line of a call's log: id characters only, at most ``limit``."""
    return _NOT_ID.sub("?", value[:limit])
