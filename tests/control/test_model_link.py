"""A half-open model link through the production adapter (real loopback TCP, real time).

The mock-clock stories (tests/call/test_model_session.py) use an in-memory fake whose connector
exits at once; trio-websocket's ``open_websocket`` closes the socket on exit and raises
``DisconnectionTimeout`` when no close frame comes back, as on a dead link.  That teardown must
neither hide why the session ended nor escape the early dial's task (which runs in the control
plane's nursery).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import trio

from acs_trio.call.bridge import run_call
from acs_trio.call.lifecycle import CallHandle, CallIds, EndReason
from acs_trio.call.model_socket import ModelConnector
from acs_trio.call.predial import PreDial
from acs_trio.config import CallLimits, ModelEndpoint
from acs_trio.control.model_ws import model_connector
from acs_trio.testing.realtime import LocalPeerSettings, serve_local_peer
from tests.call.test_call import NO_GREETING
from tests.fakes import FakeAcs, TrioMediaSocket, open_ws_pair, record

LIMITS = replace(
    CallLimits(),
    model_connect_timeout_s=2,
    close_timeout_s=0.5,
    model_ping_interval_s=0.3,
    model_pong_timeout_s=1.0,  # generous: a loaded CI machine must not miss a live pong
    model_backoff_first_s=0.05,
)


class FreezableProxy:
    """A loopback TCP relay in front of the model; ``freeze()`` makes its live link half-open:
    nothing is relayed any more in either direction, and nothing is closed."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.links = 0
        self.new_link = trio.Event()
        self._frozen: list[trio.Event] = []

    def freeze(self) -> None:
        self._frozen[-1].set()

    async def _pump(self, src: trio.abc.Stream, dst: trio.abc.Stream, frozen: trio.Event) -> None:
        while data := await src.receive_some():
            if frozen.is_set():
                await trio.sleep_forever()
            await dst.send_all(data)

    async def _handle(self, client: trio.SocketStream) -> None:
        frozen = trio.Event()
        self._frozen.append(frozen)
        self.links += 1
        self.new_link.set()
        self.new_link = trio.Event()
        up = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
        async with client, up, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, up, frozen)
            nursery.start_soon(self._pump, up, client, frozen)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)


async def _call_over_a_link_that_freezes(
    nursery: trio.Nursery, connector: ModelConnector, proxy: FreezableProxy
) -> None:
    acs_client, acs_server = await open_ws_pair(nursery)
    acs = FakeAcs(acs_client)
    nursery.start_soon(record, acs_client, acs.seen)
    handle = CallHandle(CallIds("call-link"))

    async def run() -> None:
        await run_call(
            TrioMediaSocket(acs_server), connector, handle=handle, agent=NO_GREETING, limits=LIMITS
        )

    linked = proxy.new_link
    nursery.start_soon(run)
    with trio.fail_after(10):
        if not proxy.links:  # (an early dial may have linked already)
            await linked.wait()
        await trio.sleep(0.2)  # the session is confirmed
        relinked = proxy.new_link
        proxy.freeze()
        # No pong within 1 s of the next ping: a new session over a new link.
        await relinked.wait()
        await trio.sleep(0.2)
    assert proxy.links >= 2
    assert handle.end_request is None  # the call goes on
    handle.end(EndReason.CALL_DISCONNECTED)
    with trio.fail_after(5):
        await handle.finished.wait()


async def _start(nursery: trio.Nursery) -> tuple[FreezableProxy, ModelConnector]:
    settings = LocalPeerSettings(pace_factor=None, first_delta_delay_s=0.0)
    url = await nursery.start(partial(serve_local_peer, settings=settings))
    proxy = FreezableProxy(int(url.split(":")[2].split("/")[0]))
    port = await nursery.start(proxy.serve)
    endpoint = ModelEndpoint(url=f"ws://127.0.0.1:{port}/v1/realtime")
    return proxy, model_connector(endpoint, LIMITS)


async def test_a_dead_link_through_the_real_adapter_reconnects(nursery: trio.Nursery) -> None:
    proxy, connector = await _start(nursery)
    await _call_over_a_link_that_freezes(nursery, connector, proxy)


async def test_a_dead_early_dialled_link_reconnects_and_the_early_dial_ends_quietly(
    nursery: trio.Nursery,
) -> None:
    proxy, connector = await _start(nursery)
    predial = PreDial(connector)
    async with trio.open_nursery() as supervise:  # as the control plane runs it
        supervise.start_soon(predial.run)
        await _call_over_a_link_that_freezes(nursery, predial.connector(), proxy)
        await trio.sleep(LIMITS.close_timeout_s + 0.2)  # the abandoned socket's close is bounded
        supervise.cancel_scope.cancel()
