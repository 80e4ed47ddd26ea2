"""A token bucket: how many calls the server may answer per second, whoever asks.

Even with the webhook secret, a misconfigured subscription, a replay storm or a burst of real
calls must not turn into hundreds of ``answer_call`` requests at once (ACS throttles the resource
with 429, and the real calls' answers and hang-ups suffer).  Time is trio's clock, so tests run it
under ``autojump_clock``.
"""

from __future__ import annotations

import trio

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate_per_s`` tokens per second, at most ``burst`` saved up; starts full."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self._tokens = float(burst)
        self._stamp: float | None = None

    def try_take(self) -> bool:
        """Take one token if there is one (never waits)."""
        now = trio.current_time()
        if self._stamp is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate_per_s)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
