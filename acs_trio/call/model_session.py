"""One model session's life: confirm the configuration, tell retryable failures from final ones,
and pace the reconnects.  The bridge (:mod:`acs_trio.call.bridge`) runs sessions one after the
other on one call; this module holds the rules it follows (docs/architecture.md, "The model
session").

- **Confirmed.** ``session.update`` carries an ``event_id``; the session is usable only once
  ``session.updated`` arrived (bounded by ``session_ready_timeout_s``) and agrees with what we
  sent.  An ``error`` naming that ``event_id`` is final: no agent without its instructions
  (docs/protocols/realtime.md §3.2, §6).
- **Retryable or final.** A drop (close 1001/1006/1011/1012/1013/1014), a handshake answered 408,
  429 or 5xx, a network failure, a missing pong, ``session_expired`` or an unconfirmed session
  are retried; a 4xx handshake or a rejected configuration is not.
- **Back-off.** Full jitter, doubling from ``model_backoff_first_s`` up to
  ``model_backoff_max_s``, never less than a ``Retry-After``, within ``model_reconnect_budget_s``
  per outage (the budget starts again once a session has stayed up for a whole budget).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from ..config import AgentSettings, CallLimits
from ..errors import (
    ModelClosed,
    ModelConnectError,
    ModelError,
    ModelRejected,
    ModelSessionFailed,
    ProtocolError,
)
from ..wire import realtime as rt
from .model_socket import ModelSocket

__all__ = [
    "RETRYABLE_CLOSE_CODES",
    "RETRYABLE_HTTP_STATUSES",
    "Backoff",
    "EventIds",
    "SessionInfo",
    "configure_session",
    "is_retryable",
]

logger = logging.getLogger(__name__)

#: RFC 6455 §7.4.1 codes after which a new session may well work (1001: OpenAI's 60-min limit).
RETRYABLE_CLOSE_CODES = frozenset({1001, 1006, 1011, 1012, 1013, 1014})
#: Handshake statuses worth another try (docs/protocols/realtime.md §6: back off on 429).
RETRYABLE_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: ``error`` codes that end the session but not the conversation: open a fresh one.
RETRYABLE_ERROR_CODES = frozenset({"session_expired"})

#: Wall clock for ``expires_at`` (a Unix time on the wire); tests replace it.
wall_clock: Callable[[], float] = time.time


def is_retryable(exc: BaseException) -> tuple[bool, float | None]:
    """Whether a fresh session may fix ``exc``, and the server's ``Retry-After`` if it gave one."""
    if isinstance(exc, ModelRejected):
        return exc.status_code in RETRYABLE_HTTP_STATUSES, exc.retry_after_s
    if isinstance(exc, ModelClosed):
        return exc.code is None or exc.code in RETRYABLE_CLOSE_CODES, None
    if isinstance(exc, ModelSessionFailed):
        return exc.retryable, None
    return isinstance(exc, ModelConnectError), None


class Backoff:
    """Delays between attempts to re-open the session during one outage."""

    def __init__(self, limits: CallLimits, rng: random.Random | None = None) -> None:
        self._limits = limits
        self._rng = rng or random.Random()
        self._deadline = trio.current_time() + limits.model_reconnect_budget_s
        self.attempts = 0

    def next_delay(self, retry_after_s: float | None) -> float | None:
        """The wait before the next attempt, or None when it would overrun the budget."""
        limits = self._limits
        cap = min(limits.model_backoff_max_s, limits.model_backoff_first_s * 2**self.attempts)
        self.attempts += 1
        delay = self._rng.uniform(0, cap)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        if trio.current_time() + delay >= self._deadline:
            return None
        return delay


class EventIds:
    """``event_id``s for client events: unique per call, so an ``error`` names its request."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._n = 0

    def __call__(self) -> str:
        self._n += 1
        return f"{self._prefix}_{self._n}"


@dataclass(frozen=True)
class SessionInfo:
    #: trio time at which the server will end this session.
    expires_at: float
    session: dict[str, object]


async def configure_session(
    ws: ModelSocket,
    agent: AgentSettings,
    limits: CallLimits,
    event_id: str,
    *,
    tools: Sequence[dict[str, Any]] = (),
) -> SessionInfo:
    """Send ``session.update`` and wait for the server to confirm it.

    Raises:
        ModelSessionFailed: rejected (final), disagreeing (final) or not confirmed in time.
        ModelClosed: the socket closed meanwhile.
    """
    await ws.send(rt.session_update(agent, event_id, tools=tools))
    expires_at: float | None = None
    with trio.move_on_after(limits.session_ready_timeout_s):
        while True:
            try:
                event = rt.parse_server_event(await ws.receive())
            except ProtocolError as exc:
                logger.warning("ignoring bad model event before session.updated: %.200s", exc)
                continue
            if isinstance(event, rt.SessionEvent):
                if event.expires_at is not None:
                    expires_at = trio.current_time() + (event.expires_at - wall_clock())
                if event.type == "session.updated":
                    _check(event.session, agent)
                    if expires_at is None:
                        expires_at = trio.current_time() + limits.session_default_lifetime_s
                    return SessionInfo(expires_at, event.session)
            elif isinstance(event, rt.ErrorEvent) and (event.event_id == event_id or event.fatal):
                raise ModelSessionFailed(
                    f"session.update rejected: {event.code}: {event.message}", retryable=False
                )
            elif isinstance(event, rt.ErrorEvent):
                logger.warning("model error while configuring: %s %s", event.code, event.message)
    raise ModelSessionFailed(
        f"no session.updated within {limits.session_ready_timeout_s:g}s", retryable=True
    )


def _check(session: dict[str, object], agent: AgentSettings) -> None:
    """The effective configuration must be ours where the server reports it (§3.2)."""
    instructions = session.get("instructions")
    if isinstance(instructions, str) and instructions != agent.instructions:
        raise ModelSessionFailed("session.updated does not carry our instructions", retryable=False)
    audio = session.get("audio")
    for direction in ("input", "output"):
        part = audio.get(direction) if isinstance(audio, dict) else None
        fmt = part.get("format") if isinstance(part, dict) else None
        if isinstance(fmt, dict) and (
            fmt.get("type") != "audio/pcm" or fmt.get("rate", rt.MODEL_SAMPLE_RATE) != 24000
        ):
            raise ModelSessionFailed(
                f"session.updated has {direction} format {fmt!r}, not PCM 24 kHz",
                retryable=False,
            )


def describe(exc: ModelError) -> str:
    return f"{type(exc).__name__}: {exc}"
