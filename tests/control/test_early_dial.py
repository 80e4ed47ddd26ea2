"""Early dial through the app: each admitted call dials its model at once, and the socket never
outlives the call, whether the call is answered, refused or ended before media connects."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from acs_trio.config import ControlTimeouts
from acs_trio.control.app import create_app
from acs_trio.control.model_ws import WebsocketModelSocket
from tests.acs_service import FakeAcsService, incoming_call_event
from tests.control.test_app import StandInCalls, settings
from tests.fakes import FakeModel


class CountingModel:
    """FakeModel's connector, counting sockets opened and released (their context exited)."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.model = FakeModel(nursery)
        self.opened = 0
        self.released = 0

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[WebsocketModelSocket]:
        self.opened += 1
        try:
            async with self.model.connect() as ws:
                yield ws
        finally:
            self.released += 1


@asynccontextmanager
async def serving(model: CountingModel, **timeouts: Any) -> AsyncIterator[tuple[Any, Any]]:
    acs = FakeAcsService()
    app = create_app(
        settings(),
        http_transport=acs.transport,
        run_call=StandInCalls().run_call,
        connect_model=model.connect,
        timeouts=ControlTimeouts(answer_s=5, media_connect_s=30, hang_up_s=2, **timeouts),
    )
    async with app.test_app() as test_app:
        yield app, test_app.test_client(), acs


async def test_a_refused_answer_releases_the_early_socket(nursery: trio.Nursery) -> None:
    model = CountingModel(nursery)
    async with serving(model) as (app, client, acs):
        acs.answer_status = 400
        await client.post("/api/incomingCall", json=[incoming_call_event("e-1", "ctx-1")])
        await trio.testing.wait_all_tasks_blocked()
        assert app.extensions["acs_trio"].plane.calls == {}
        assert (model.opened, model.released) == (1, 1)
        # A duplicate delivery is not admitted: no second dial.
        await client.post("/api/incomingCall", json=[incoming_call_event("e-1", "ctx-1")])
        await trio.testing.wait_all_tasks_blocked()
        assert model.opened == 1


async def test_media_that_never_connects_releases_the_early_socket(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    model = CountingModel(nursery)
    async with serving(model) as (app, client, acs):
        await client.post("/api/incomingCall", json=[incoming_call_event("e-1", "ctx-1")])
        await trio.testing.wait_all_tasks_blocked()
        assert (model.opened, model.released) == (1, 0)  # dialled at admission, held
        await trio.sleep(31)  # media_connect_s passes: the call is hung up and dropped
        assert app.extensions["acs_trio"].plane.calls == {}
        assert model.released == 1
        assert acs.hang_ups == ["conn-1"]
