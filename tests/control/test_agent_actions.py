"""The agent acts on the ACS call: hang-up after the goodbye has played, transfer, keypad on answer.

Whole server, real ``run_call``: the routes run under quart-trio's test client, ACS REST and the
JWKS are one ``httpx.MockTransport`` (:class:`FakeAcsService`), the model is :class:`FakeModel`,
and the test plays ACS on the media WebSocket.  Mock clock: times are exact.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from quart.testing.connections import WebsocketDisconnectError

from acs_trio.call.lifecycle import EndReason
from acs_trio.config import (
    AcsSettings,
    ActionSettings,
    AgentSettings,
    ControlTimeouts,
    ModelEndpoint,
    ServerSettings,
    Settings,
)
from acs_trio.control.app import create_app
from acs_trio.errors import ConfigError
from tests.acs_service import (
    ISSUER,
    JWKS_URL,
    RESOURCE_ID,
    FakeAcsService,
    callback_event,
    incoming_call_event,
)
from tests.fakes import FakeModel, pcm_tone


def settings(actions: ActionSettings) -> Settings:
    return Settings(
        model=ModelEndpoint(url="ws://127.0.0.1:9/v1/realtime"),
        agent=AgentSettings(greeting=None),
        acs=AcsSettings(
            connection_string="endpoint=https://acs.test/;accesskey=QUJDRA==",
            public_base_url="https://bot.test",
            resource_id=RESOURCE_ID,
            jwks_url=JWKS_URL,
            jwt_issuer=ISSUER,
        ),
        server=ServerSettings(shutdown_grace_s=0.05),
        actions=actions,
    )


@dataclass
class Server:
    client: Any
    acs: FakeAcsService
    model: FakeModel
    app: Any
    #: (time, message) the test's ACS received on the media socket.
    media_in: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    media_closed_at: float | None = None

    async def callback(self, name: str, **data: Any) -> None:
        event = callback_event(name, "conn-1", **data)
        event["id"] = f"{event['id']}-{trio.current_time()}"
        response = await self.client.post(
            f"/api/callbacks/{self.acs.token_of(1)}",
            json=[event],
            headers={"Authorization": self.acs.signer.bearer()},
        )
        assert response.status_code == 200
        await trio.testing.wait_all_tasks_blocked()

    def frames(self) -> list[float]:
        return [t for t, m in self.media_in if m.get("Kind") == "AudioData"]

    @property
    def calls(self) -> dict[str, Any]:
        return dict(self.app.extensions["acs_trio"].plane.calls)


@asynccontextmanager
async def server(
    nursery: trio.Nursery, actions: ActionSettings | None = None
) -> AsyncIterator[Server]:
    acs, model = FakeAcsService(), FakeModel(nursery)
    app = create_app(
        settings(actions or ActionSettings()),
        http_transport=acs.transport,
        connect_model=model.connect,
        timeouts=ControlTimeouts(answer_s=5, media_connect_s=30, hang_up_s=2),
    )
    async with app.test_app() as test_app:
        yield Server(test_app.test_client(), acs, model, app)


@asynccontextmanager
async def media(srv: Server) -> AsyncIterator[None]:
    """ACS's media socket: AudioMetadata, then record what the server sends until it closes."""
    response = await srv.client.post("/api/incomingCall", json=[incoming_call_event("e", "ctx")])
    assert response.status_code == 200
    await trio.testing.wait_all_tasks_blocked()
    path = f"/ws/{srv.acs.token_of(1)}"
    async with (
        srv.client.websocket(path, headers={"Authorization": srv.acs.signer.bearer()}) as ws,
        trio.open_nursery() as nursery,
    ):
        meta = {"subscriptionId": "s", "encoding": "PCM", "sampleRate": 24000, "channels": 1}
        await ws.send(
            json.dumps({"kind": "AudioMetadata", "audioMetadata": {**meta, "length": 960}})
        )

        async def receive() -> None:
            try:
                while True:
                    srv.media_in.append((trio.current_time(), json.loads(await ws.receive())))
            except WebsocketDisconnectError:
                srv.media_closed_at = trio.current_time()

        nursery.start_soon(receive)
        await srv.model.connected.wait()
        await trio.testing.wait_all_tasks_blocked()
        yield


async def speak_then_call(model: FakeModel, ms: int, name: str, arguments: str = "{}") -> None:
    """One response: ``ms`` of audio as a burst, then a function call, then response.done."""
    response_id, item_id = await model.start_response()
    for _ in range(ms // 100):
        await model.audio_delta(response_id, item_id, pcm_tone(100))
    await model.function_call(response_id, name, arguments)
    await model.finish_response(response_id, item_id)


async def test_end_call_hangs_up_for_everyone_after_the_goodbye_played(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async with server(nursery) as srv, media(srv):
        t0 = trio.current_time()
        await speak_then_call(srv.model, 1000, "end_call")
        await trio.sleep(5)
    frames = srv.frames()
    assert len(frames) == 50
    # 50 frames of 20 ms playing back to back from t0 have played at t0 + 1.0; the last one
    # left earlier (paced, up to 100 ms ahead).  The REST hang-up (terminate = for everyone)
    # comes when it has played, not when it was sent.
    assert frames[0] == t0
    assert frames[-1] < t0 + 1.0 - 0.02
    assert srv.acs.hang_ups == ["conn-1"]
    assert srv.acs.hang_up_times == [pytest.approx(t0 + 1.0)]
    assert srv.media_closed_at == pytest.approx(t0 + 1.0)
    assert srv.calls == {}


async def test_transfer_accepted(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    actions = ActionSettings(transfer_target="+14255550199")
    async with server(nursery, actions) as srv, media(srv):
        [update] = srv.model.events("session.update")
        assert "transfer_call" in [t["name"] for t in update["session"]["tools"]]
        t0 = trio.current_time()
        await speak_then_call(srv.model, 400, "transfer_call", '{"reason": "asked for a person"}')
        await trio.sleep(1)
        [(asked_at, body)] = srv.acs.transfers
        assert asked_at == pytest.approx(t0 + 0.4)  # after "let me transfer you" played
        assert body["targetParticipant"]["phoneNumber"] == {"value": "+14255550199"}
        operation = body["operationContext"]
        # A callback for another operation is not this transfer's outcome.
        await srv.callback("CallTransferAccepted", operationContext="someone-else")
        assert srv.media_closed_at is None
        await srv.callback("CallTransferAccepted", operationContext=operation)
        assert srv.media_closed_at == trio.current_time()
        await srv.callback("CallDisconnected")  # ACS removes our leg
        await trio.sleep(1)
    assert srv.acs.hang_ups == []  # never "for everyone" after a transfer: the caller is talking
    assert srv.calls == {}


async def test_transfer_failed_reaches_the_model(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    actions = ActionSettings(transfer_target="8:acs:res_agent-7")
    async with server(nursery, actions) as srv, media(srv):
        [call_id] = await srv.model.call_tools(("transfer_call", "{}"))
        await trio.sleep(0.1)
        [(_, body)] = srv.acs.transfers
        assert body["targetParticipant"]["communicationUser"] == {"id": "8:acs:res_agent-7"}
        info = {"code": 486, "subCode": 7600, "message": "Busy here"}
        await srv.callback(
            "CallTransferFailed", operationContext=body["operationContext"], resultInformation=info
        )
        assert srv.model.outputs()[call_id] == {
            "error": "transfer failed: the transfer failed (486/7600 'Busy here')"
        }
        assert srv.model.tool_traffic()[-1][1] == "response.create"
        assert srv.media_closed_at is None  # the call goes on
        await srv.callback("CallDisconnected")
        await trio.sleep(1)
    assert srv.acs.hang_ups == []


async def test_a_transfer_that_never_completes_is_bounded(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # (Under MEDIA_TIMEOUT_S: this test's ACS sends no audio frames.)
    actions = ActionSettings(transfer_target="+14255550199", transfer_timeout_s=10)
    async with server(nursery, actions) as srv, media(srv):
        t0 = trio.current_time()
        [call_id] = await srv.model.call_tools(("transfer_call", "{}"))
        await trio.sleep(12)
        assert srv.model.tool_traffic()[0] == (
            pytest.approx(t0 + 10),
            f"output:{call_id}",
        )
        assert srv.model.outputs()[call_id] == {
            "error": "transfer failed: no answer from the transfer target within 10 s"
        }
        await srv.callback("CallDisconnected")


async def test_a_refused_transfer_request_reaches_the_model(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    actions = ActionSettings(transfer_target="+14255550199")
    async with server(nursery, actions) as srv, media(srv):
        srv.acs.transfer_status = 400
        [call_id] = await srv.model.call_tools(("transfer_call", "{}"))
        await trio.sleep(1)
        error = srv.model.outputs()[call_id]["error"]
        assert error.startswith("transfer failed: ACS refused the transfer: ")
        assert "HTTP 400 8500: transfer refused" in error
        await srv.callback("CallDisconnected")


async def test_dtmf_setting_reaches_the_answer(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    for enabled in (True, False):
        async with server(nursery, ActionSettings(dtmf_enabled=enabled)) as srv:
            await srv.client.post("/api/incomingCall", json=[incoming_call_event("e", "ctx")])
            await trio.testing.wait_all_tasks_blocked()
            [answer] = srv.acs.answers
            assert answer["mediaStreamingOptions"]["enableDtmfTones"] is enabled
            await srv.callback("CallDisconnected")


def test_a_bad_tools_module_stops_the_server_with_one_line() -> None:
    with pytest.raises(ConfigError, match=r"AGENT_TOOLS='no_such_module_xyz': cannot import it"):
        create_app(settings(ActionSettings(tools_module="no_such_module_xyz")))


def test_the_example_tools_are_loaded_and_offered() -> None:
    app = create_app(settings(ActionSettings(tools_module="examples.orders")))
    names = [t.name for t in app.extensions["acs_trio"].tools]
    assert names == ["lookup_order"]


def test_end_reasons_of_agent_actions() -> None:
    assert EndReason("agent_hung_up") is EndReason.AGENT_HUNG_UP
    assert EndReason("transferred") is EndReason.TRANSFERRED
