"""Event-loop lag: a Trio task that measures how late it is woken.

It sleeps until a deadline every ``interval_s`` and records how long after that deadline it
actually ran.  On an idle loop that is a few tens of microseconds; when tasks hog the loop (or the
machine is out of CPU) every call's audio pacing suffers by the same amount, so this one number
says "the server is saturated" before callers hear it.  The metrics exporter observes every
measurement; admission (``MAX_LOOP_LAG_MS``) reads :attr:`LoopLag.lag_s`, the median of the last
few, so one stall (a garbage collection, start-up work) does not turn callers away but a loop that
is late on most wake-ups does.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import trio

from ..config import LOOP_LAG_INTERVAL_S

__all__ = ["LoopLag"]


class LoopLag:
    """The latest lag, the recent median, and a callback for each measurement (the histogram)."""

    def __init__(
        self,
        observe: Callable[[float], None] | None = None,
        *,
        interval_s: float = LOOP_LAG_INTERVAL_S,
        window: int = 8,
    ) -> None:
        self._observe = observe
        self.interval_s = interval_s
        #: Seconds the last wake-up came after its deadline.
        self.latest_s = 0.0
        #: Largest lag seen so far, seconds.
        self.max_s = 0.0
        self._recent: list[float] = [0.0] * window
        self._next = 0

    @property
    def lag_s(self) -> float:
        """The median lag over the last ``window`` measurements, seconds."""
        return statistics.median(self._recent)

    @property
    def worst_s(self) -> float:
        """The largest lag over the last ``window`` measurements, seconds."""
        return max(self._recent)

    def record(self, lag_s: float) -> None:
        """One measurement (``run`` calls it; tests may too)."""
        lag = max(0.0, lag_s)
        self.latest_s = lag
        self.max_s = max(self.max_s, lag)
        self._recent[self._next] = lag
        self._next = (self._next + 1) % len(self._recent)
        if self._observe is not None:
            self._observe(lag)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Measure forever (until cancelled)."""
        task_status.started()
        while True:
            deadline = trio.current_time() + self.interval_s
            await trio.sleep_until(deadline)
            self.record(trio.current_time() - deadline)
