"""An optional, non-blocking stream of what happens in a call, for a live view of it.

``run_call(..., events=sink)`` calls ``sink(event)`` synchronously, in the task where the thing
happened, with a small JSON-ready dict: ``{"type": "transcript", "role": "agent", "text": …}``.
The sink must not block or raise (it runs on the call's hot path): the softphone's sink puts the
event on a bounded channel and drops it when the channel is full (docs/softphone.md lists the
event types).  With no sink (the default) the call does no extra work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["CallEvent", "CallEventSink"]

#: One event: ``type`` plus its fields, JSON-serialisable.
CallEvent = dict[str, Any]
CallEventSink = Callable[[CallEvent], None]
