"""The I/O loop of one local-peer connection: a receive loop and a response sender, one nursery.

All protocol decisions live in :class:`~.session.PeerSession`; this module only moves frames and
paces audio.  Deltas are paced with ``trio.sleep`` faster than real time, as the real service sends
them (docs/protocols/realtime.md §5: the client "manages audio playback"), so a barge-in arriving from the
receive loop can cut a response half-way: the session marks the plan finished and the sender, which
only acts between awaits, sends no further delta.
"""

from __future__ import annotations

import json
import logging
import time

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from .assets import load_pcm
from .protocol import Event
from .session import PeerSession, ResponsePlan
from .settings import LocalPeerSettings, PeerStats

__all__ = ["handle_connection"]

logger = logging.getLogger(__name__)

#: Responses waiting for the sender.  Only one response is active at a time, so 4 is plenty.
PLAN_QUEUE_SIZE = 4
#: How long the closing handshake may take once the connection is over.
CLOSE_TIMEOUT_S = 2.0
#: Session lifetime announced in ``session.created.expires_at`` (docs/protocols/realtime.md §6: 60 min on OpenAI GA).
SESSION_LIFETIME_S = 3600


class _ClientGone(Exception):
    """The client closed the socket, or stopped reading it for ``send_timeout_s``."""


class _Link:
    """Sends batches of server events on the socket, with a timeout and a tally in the stats.

    A batch goes out under one lock, so the events one session step produced stay together: the
    sender's closing ``response.done`` can never be split by the receive loop's next
    ``response.created``.  trio's Lock is fair and an uncontended acquire does not yield, so
    batches leave in the order the session produced them.
    """

    def __init__(self, ws: WebSocketConnection, settings: LocalPeerSettings, stats: PeerStats):
        self.ws = ws
        self._timeout_s = settings.send_timeout_s
        self._stats = stats
        self._lock = trio.Lock()

    async def send_all(self, events: list[Event]) -> None:
        async with self._lock:
            for event in events:
                with trio.move_on_after(self._timeout_s) as scope:
                    try:
                        await self.ws.send_message(json.dumps(event))
                    except ConnectionClosed:
                        raise _ClientGone("closed by client") from None
                if scope.cancelled_caught:
                    raise _ClientGone(f"client did not read for {self._timeout_s} s")
                self._stats.events_sent[event["type"]] += 1


async def handle_connection(
    ws: WebSocketConnection,
    settings: LocalPeerSettings | None = None,
    *,
    stats: PeerStats | None = None,
) -> PeerStats:
    """Play the local test peer on an accepted WebSocket until the client leaves.

    Works on any accepted connection (``serve_websocket`` or ``wrap_server_stream`` over a memory
    stream).  Returns the connection's :class:`PeerStats` (the same object as ``stats`` if given,
    so a caller can also watch it live).  Closes ``ws`` before returning.
    """
    settings = settings or LocalPeerSettings()
    stats = stats if stats is not None else PeerStats()
    # Wall clock on purpose: session.expires_at is a real Unix timestamp on the wire (docs/protocols/realtime.md §6).
    expires_at = int(time.time()) + SESSION_LIFETIME_S
    session = PeerSession(settings, stats, greeting=load_pcm("greeting.wav"), expires_at=expires_at)
    link = _Link(ws, settings, stats)
    plan_send, plan_recv = trio.open_memory_channel[ResponsePlan](PLAN_QUEUE_SIZE)
    session_id = session.session["id"]
    logger.info("local peer: connection %s opened (LOCAL TEST PEER, not a model)", session_id)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_send_responses, link, session, plan_recv, nursery.cancel_scope)
            await _receive_loop(link, session, plan_send, settings.idle_timeout_s)
            nursery.cancel_scope.cancel(reason="receive loop ended")
    finally:
        stats.closed = True
        with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
            await ws.aclose()
        logger.info(
            "local peer: connection %s closed: received=%s responses=%s cancels=%s "
            "truncations=%d errors=%s",
            session_id, dict(stats.events_received), stats.responses, stats.cancels,
            len(stats.truncations), stats.errors,
        )  # fmt: skip
    return stats


async def _receive_loop(
    link: _Link,
    session: PeerSession,
    plans: trio.MemorySendChannel[ResponsePlan],
    idle_timeout_s: float,
) -> None:
    with plans:
        try:
            await link.send_all(session.opening())
            while True:
                with trio.move_on_after(idle_timeout_s) as idle:
                    message = await link.ws.get_message()
                if idle.cancelled_caught:
                    logger.info("local peer: nothing received for %s s; closing", idle_timeout_s)
                    return
                outgoing = session.receive(message)
                await link.send_all([e for e in outgoing if not isinstance(e, ResponsePlan)])
                for plan in outgoing:
                    if isinstance(plan, ResponsePlan):  # always last: its header events went first
                        await plans.send(plan)
        except (ConnectionClosed, _ClientGone) as exc:
            logger.info("local peer: client gone (%s)", exc)


async def _send_responses(
    link: _Link,
    session: PeerSession,
    plans: trio.MemoryReceiveChannel[ResponsePlan],
    scope: trio.CancelScope,
) -> None:
    settings = session.settings
    with plans:
        try:
            async for plan in plans:
                await trio.sleep(settings.first_delta_delay_s)
                while events := session.next_chunk(plan):
                    await link.send_all(events)
                    if settings.pace_factor is None:
                        await trio.lowlevel.checkpoint()
                    else:
                        await trio.sleep(settings.chunk_ms / 1000 / settings.pace_factor)
                await link.send_all(session.complete(plan))
        except _ClientGone as exc:
            logger.info("local peer: client gone while sending (%s)", exc)
            scope.cancel(reason="client gone")
