"""Event-loop lag: a Trio task that measures how late it is woken.

It sleeps until a deadline every ``interval_s`` and records how long after that deadline it
actually ran.  On an idle loop that is a few tens of microseconds; when tasks hog the loop (or the
machine is out of CPU) every call's audio pacing suffers by the same amount, so this one number
says "the server is saturated" before callers hear it.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ..config import LOOP_LAG_INTERVAL_S

__all__ = ["LoopLag"]


class LoopLag:
    """The latest lag, and a callback for each measurement (the metrics histogram)."""

    def __init__(
        self,
        observe: Callable[[float], None] | None = None,
        *,
        interval_s: float = LOOP_LAG_INTERVAL_S,
    ) -> None:
        self._observe = observe
        self.interval_s = interval_s
        #: Seconds the last wake-up came after its deadline.
        self.latest_s = 0.0
        #: Largest lag seen so far, seconds.
        self.max_s = 0.0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Measure forever (until cancelled)."""
        task_status.started()
        while True:
            deadline = trio.current_time() + self.interval_s
            await trio.sleep_until(deadline)
            lag = max(0.0, trio.current_time() - deadline)
            self.latest_s = lag
            self.max_s = max(self.max_s, lag)
            if self._observe is not None:
                self._observe(lag)
