"""Attacker-controlled text in log lines: bounded and escaped.

Webhook fields (event ids, caller numbers, correlation ids, event types) come from the network.
``%s`` would let a ``"+1\\nFAKE LOG LINE"`` forge a line and a 1 MB value flood the log; logging
:func:`clip` of them (a ``repr`` of at most ``limit`` characters) keeps every field on its line
and short.
"""

from __future__ import annotations

__all__ = ["clip"]

#: Characters of an untrusted value kept in a log line.
CLIP_CHARS = 80


def clip(value: object, limit: int = CLIP_CHARS) -> str:
    """``repr`` of ``value`` (as text) cut to ``limit`` characters: quotes and escapes included."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return repr(text[:limit]) + f"…(+{len(text) - limit})"
    return repr(text)
