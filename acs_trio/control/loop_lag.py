"""How late the Trio event loop runs: a small task that measures its own scheduling delay.

Every ``tick_s`` the monitor sleeps until a deadline and notes how late it woke up.  A loop that
is busy (too many calls, a blocking call somewhere) wakes it late; that lateness is exactly the
delay every call's playout sees.  Admission reads :attr:`LoopLagMonitor.lag_s` to refuse new calls
while the process is overloaded; the metrics exporter can read the same numbers.
"""

from __future__ import annotations

import statistics

import trio

from ..config import LOOP_LAG_TICK_S

__all__ = ["LoopLagMonitor"]


class LoopLagMonitor:
    """Measures scheduling delay; :attr:`lag_s` is the median of the last ``window`` ticks.

    The median, not the maximum: one stall (a garbage collection, start-up work) should not turn
    callers away, a loop that is late on most ticks should.  :attr:`worst_s` has the maximum.
    """

    def __init__(self, tick_s: float = LOOP_LAG_TICK_S, window: int = 10) -> None:
        self.tick_s = tick_s
        self._recent: list[float] = [0.0] * window
        self._next = 0
        #: The last measured delay, seconds.
        self.last_s = 0.0
        #: Ticks measured so far (a metrics exporter can compute rates from it).
        self.ticks = 0

    @property
    def lag_s(self) -> float:
        """The median delay over the last ``window`` ticks, seconds."""
        return statistics.median(self._recent)

    @property
    def worst_s(self) -> float:
        """The largest delay over the last ``window`` ticks, seconds."""
        return max(self._recent)

    def record(self, delay_s: float) -> None:
        self.last_s = max(0.0, delay_s)
        self._recent[self._next] = self.last_s
        self._next = (self._next + 1) % len(self._recent)
        self.ticks += 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Measure until cancelled."""
        task_status.started()
        while True:
            deadline = trio.current_time() + self.tick_s
            await trio.sleep_until(deadline)
            self.record(trio.current_time() - deadline)
