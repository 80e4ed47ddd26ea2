"""The control plane's routes, driven through quart-trio's test client with a stand-in run_call.

ACS REST and the JWKS are one ``httpx.MockTransport`` (:class:`FakeAcsService`); the call bridge is
:class:`StandInCalls`, an echo that ends like the real one (caller hang-up, handle.cancel, or a
scripted "model died").  The real run_call is exercised end to end in test_server_e2e.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio
from quart.testing.connections import WebsocketDisconnectError, WebsocketResponseError

from acs_trio.call.lifecycle import CallHandle, CallSummary, EndReason
from acs_trio.call.media_socket import MediaSocket
from acs_trio.config import AcsSettings, ControlTimeouts, ModelEndpoint, ServerSettings, Settings
from acs_trio.control.app import create_app
from acs_trio.control.control_plane import ControlPlane
from acs_trio.errors import MediaClosed
from acs_trio.testing.tokens import rsa_key
from tests.acs_service import (
    ISSUER,
    JWKS_URL,
    RESOURCE_ID,
    FakeAcsService,
    callback_event,
    incoming_call_event,
)

BASE = "https://bot.test"


def settings(*, max_calls: int = 10, grace_s: float = 0.05) -> Settings:
    return Settings(
        model=ModelEndpoint(url="ws://127.0.0.1:9/v1/realtime"),
        acs=AcsSettings(
            connection_string="endpoint=https://acs.test/;accesskey=QUJDRA==",
            public_base_url=BASE,
            resource_id=RESOURCE_ID,
            jwks_url=JWKS_URL,
            jwt_issuer=ISSUER,
        ),
        server=ServerSettings(max_concurrent_calls=max_calls, shutdown_grace_s=grace_s),
    )


class StandInCalls:
    """Echoes media; ends on caller close, on handle.cancel, or on the message ``"die"``."""

    def __init__(self) -> None:
        self.handles: list[CallHandle] = []
        self.summaries: list[CallSummary] = []

    async def run_call(
        self, media: MediaSocket, connect_model: Any, *, handle: CallHandle, **_: Any
    ) -> CallSummary:
        self.handles.append(handle)
        reason = EndReason.CALLER_HUNG_UP
        with trio.CancelScope() as scope:
            # lifecycle.py is changing from bind_scope(scope) to bind(on_cancel): accept both.
            if hasattr(handle, "bind"):
                handle.bind(scope.cancel)
            else:
                handle.bind_scope(scope)
            try:
                while (message := await media.receive()) not in {"die", "stuck"}:
                    await media.send(f"echo:{message!s}")
                reason = EndReason.MODEL_CLOSED
                if message == "stuck":  # ends, then blocks like a send to a dead peer
                    handle.end(reason, "stuck")
                    with trio.CancelScope(shield=True, deadline=trio.current_time() + 60):
                        await trio.sleep_forever()
            except MediaClosed:
                pass
        if scope.cancelled_caught and handle.end_request is not None:
            reason = handle.end_request[0]
        if not reason.caller_gone:
            await media.close(reason.media_close_code, reason.value)
        summary = CallSummary(ids=handle.ids, started_at=0.0, end_reason=reason)
        self.summaries.append(summary)
        return summary


@dataclass
class Harness:
    app: Any
    client: Any
    acs: FakeAcsService
    calls: StandInCalls

    @property
    def plane(self) -> ControlPlane:
        plane = self.app.extensions["acs_trio"].plane
        assert plane is not None
        return plane

    def auth(self, **kwargs: Any) -> dict[str, str]:
        return {"Authorization": self.acs.signer.bearer(**kwargs)}

    async def call_dies(self, n: int) -> None:
        """The n-th answered call's media socket opens, then the call ends on our side."""
        async with self.client.websocket(f"/ws/{self.acs.token_of(n)}", headers=self.auth()) as ws:
            await ws.send("die")
            with pytest.raises(WebsocketDisconnectError):
                await ws.receive()

    async def incoming(self, *events: dict[str, Any]) -> Any:
        response = await self.client.post("/api/incomingCall", json=list(events))
        await trio.testing.wait_all_tasks_blocked()  # let the answer tasks run
        return response

    async def callback(self, token: str, *events: dict[str, Any], **auth: Any) -> Any:
        response = await self.client.post(
            f"/api/callbacks/{token}", json=list(events), headers=self.auth(**auth)
        )
        await trio.testing.wait_all_tasks_blocked()
        return response


@asynccontextmanager
async def _harness(**kwargs: Any) -> AsyncIterator[Harness]:
    acs, calls = FakeAcsService(), StandInCalls()
    app = create_app(
        settings(**kwargs),
        http_transport=acs.transport,
        run_call=calls.run_call,
        timeouts=ControlTimeouts(answer_s=5, media_connect_s=30, hang_up_s=2),
    )
    async with app.test_app() as test_app:
        yield Harness(app, test_app.test_client(), acs, calls)


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    async with _harness() as harness:
        yield harness


# -- Event Grid handshake, both schemas -------------------------------------------------------


async def test_event_grid_validation_returns_the_code(h: Harness) -> None:
    event = {
        "id": "v-1",
        "topic": "/subscriptions/x",
        "subject": "",
        "data": {"validationCode": "512d38b6", "validationUrl": "https://rp.test/validate"},
        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "eventTime": "2018-01-25T22:12:19.4556811Z",
        "metadataVersion": "1",
        "dataVersion": "1",
    }
    response = await h.client.post(
        "/api/incomingCall", json=[event], headers={"aeg-event-type": "SubscriptionValidation"}
    )
    assert response.status_code == 200
    assert await response.get_json() == {"validationResponse": "512d38b6"}


async def test_cloudevents_options_handshake(h: Harness) -> None:
    response = await h.client.options(
        "/api/incomingCall", headers={"WebHook-Request-Origin": "eventgrid.azure.net"}
    )
    assert response.status_code == 200
    assert response.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert response.headers["WebHook-Allowed-Rate"] == "*"
    assert (await h.client.options("/api/incomingCall")).status_code == 400


async def test_cloudevents_incoming_call_is_answered(h: Harness) -> None:
    event = incoming_call_event("e-1", "ctx-1")
    cloud = {
        "id": event["id"],
        "source": event["topic"],
        "type": event["eventType"],
        "data": event["data"],
        "specversion": "1.0",
    }
    response = await h.client.post(
        "/api/incomingCall",
        data=json.dumps([cloud]),
        headers={"Content-Type": "application/cloudevents-batch+json"},
    )
    await trio.testing.wait_all_tasks_blocked()
    assert response.status_code == 200
    assert [a["incomingCallContext"] for a in h.acs.answers] == ["ctx-1"]


# -- IncomingCall → answer ------------------------------------------------------------------


async def test_incoming_call_answers_with_a_per_call_token(h: Harness) -> None:
    response = await h.incoming(incoming_call_event("e-1", "ctx-1"))
    assert response.status_code == 200
    [body] = h.acs.answers
    token = h.acs.token_of(1)
    assert len(token) >= 43  # secrets.token_urlsafe(32)
    assert body == {
        "incomingCallContext": "ctx-1",
        "callbackUri": f"{BASE}/api/callbacks/{token}",
        "mediaStreamingOptions": {
            "transportUrl": f"wss://bot.test/ws/{token}",
            "transportType": "websocket",
            "contentType": "audio",
            "audioChannelType": "mixed",
            "startMediaStreaming": True,
            "enableBidirectional": True,
            "audioFormat": "pcm24KMono",
            "enableDtmfTones": True,  # §2.3: DtmfData on the media socket (DTMF_ENABLED)
        },
    }
    assert h.plane.calls[token].call_connection_id == "conn-1"


async def test_every_event_in_a_batch_is_answered_and_duplicates_once(h: Harness) -> None:
    first, second = incoming_call_event("e-1", "ctx-1"), incoming_call_event("e-2", "ctx-2")
    await h.incoming(first, second, first)
    await h.incoming(first)  # Event Grid redelivery, same id
    await h.incoming(incoming_call_event("e-3", "ctx-2"))  # same context, new id
    assert sorted(a["incomingCallContext"] for a in h.acs.answers) == ["ctx-1", "ctx-2"]
    assert h.acs.token_of(1) != h.acs.token_of(2)


async def test_response_does_not_wait_for_a_slow_answer(
    h: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    h.acs.answer_gate = trio.Event()
    with trio.fail_after(0.1):
        response = await h.client.post(
            "/api/incomingCall", json=[incoming_call_event("e-1", "ctx-1")]
        )
    assert response.status_code == 200
    h.acs.answer_gate.set()


async def test_failed_answer_is_logged_and_dropped(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h.acs.answer_status = 400
    response = await h.incoming(incoming_call_event("e-1", "stale"))
    assert response.status_code == 200
    assert h.plane.calls == {}
    assert "answer_call failed" in caplog.text
    assert "8523" in caplog.text


async def test_over_capacity_the_call_is_not_answered(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with _harness(max_calls=1) as h:
        assert (await h.client.get("/readyz")).status_code == 200
        await h.incoming(incoming_call_event("e-1", "ctx-1"))
        assert (await h.client.get("/readyz")).status_code == 503
        await h.incoming(incoming_call_event("e-2", "ctx-2"))
        assert len(h.acs.answers) == 1
        assert "full" in caplog.text


# -- callbacks ------------------------------------------------------------------------------


async def test_call_disconnected_ends_only_its_own_call(h: Harness) -> None:
    await h.incoming(incoming_call_event("e-1", "ctx-1"), incoming_call_event("e-2", "ctx-2"))
    one, two = h.acs.token_of(1), h.acs.token_of(2)
    async with (
        h.client.websocket(f"/ws/{one}", headers=h.auth()) as ws1,
        h.client.websocket(f"/ws/{two}", headers=h.auth()) as ws2,
    ):
        await ws1.send("hello")
        assert await ws1.receive() == "echo:hello"
        response = await h.callback(one, callback_event("CallDisconnected", "conn-1"))
        assert response.status_code == 200
        assert h.calls.summaries[0].end_reason is EndReason.CALL_DISCONNECTED
        await ws2.send("still here")
        assert await ws2.receive() == "echo:still here"
    await trio.testing.wait_all_tasks_blocked()
    # call 2's caller hung up: its socket closed, and ACS says CallDisconnected.
    await h.callback(two, callback_event("CallDisconnected", "conn-2"))
    assert h.acs.hang_ups == []
    assert h.plane.calls == {}


async def test_callback_needs_a_valid_jwt(h: Harness) -> None:
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    token = h.acs.token_of(1)
    event = [callback_event("CallDisconnected", "conn-1")]
    no_auth = await h.client.post(f"/api/callbacks/{token}", json=event)
    assert no_auth.status_code == 401
    forged = await h.callback(
        token, callback_event("CallDisconnected", "conn-1"), key=rsa_key("attacker")
    )
    assert forged.status_code == 401
    assert not h.plane.calls[token].stop_requested.is_set()


async def test_callbacks_for_unknown_or_other_calls_change_nothing(h: Harness) -> None:
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    token = h.acs.token_of(1)
    unknown = await h.callback("no-such-token", callback_event("CallDisconnected", "conn-1"))
    assert unknown.status_code == 200
    wrong_id = await h.callback(token, callback_event("CallDisconnected", "conn-999"))
    assert wrong_id.status_code == 200
    assert not h.plane.calls[token].stop_requested.is_set()
    for name in ("CallConnected", "MediaStreamingStarted", "ParticipantsUpdated", "PlayCompleted"):
        assert (await h.callback(token, callback_event(name, "conn-1"))).status_code == 200
    assert not h.plane.calls[token].stop_requested.is_set()


async def test_media_streaming_failed_hangs_up(h: Harness) -> None:
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    failed = callback_event(
        "MediaStreamingFailed",
        "conn-1",
        resultInformation={"code": 400, "subCode": 8581, "message": "Transport url is not valid"},
    )
    await h.callback(h.acs.token_of(1), failed)
    assert h.acs.hang_ups == ["conn-1"]
    assert h.plane.calls == {}


async def refusal_status(client: Any, path: str, headers: dict[str, str]) -> int | None:
    """The HTTP status the media route answered the handshake with (None if it accepted)."""
    status = None
    try:
        async with client.websocket(path, headers=headers) as ws:
            await ws.receive()
    except* WebsocketResponseError as group:
        status = group.exceptions[0].response.status_code  # type: ignore[attr-defined]
    return status


# -- the media route --------------------------------------------------------------------------


async def test_media_socket_is_refused_without_valid_credentials(h: Harness) -> None:
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    token = h.acs.token_of(1)
    cases = [
        ("/ws/not-a-token", h.auth(), 403),
        (f"/ws/{token}", {}, 401),
        (f"/ws/{token}", h.auth(audience="someone-else"), 401),
        (f"/ws/{token}", h.auth(lifetime_s=-3600), 401),
    ]
    for path, headers, status in cases:
        assert await refusal_status(h.client, path, headers) == status, path
    assert h.calls.handles == []


async def test_a_token_serves_one_live_media_socket(h: Harness) -> None:
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    token = h.acs.token_of(1)
    async with h.client.websocket(f"/ws/{token}", headers=h.auth()) as ws:
        await ws.send("hi")
        assert await ws.receive() == "echo:hi"
        assert await refusal_status(h.client, f"/ws/{token}", h.auth()) == 403
    assert len(h.calls.handles) == 1


async def test_media_may_connect_before_answer_returns(h: Harness) -> None:
    h.acs.answer_gate = trio.Event()
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    token = h.acs.token_of(1)
    headers = {**h.auth(), "x-ms-call-connection-id": "conn-1"}
    async with h.client.websocket(f"/ws/{token}", headers=headers) as ws:
        await ws.send("early")
        assert await ws.receive() == "echo:early"
        assert h.calls.handles[0].ids.call_id == "conn-1"
        h.acs.answer_gate.set()
        await trio.testing.wait_all_tasks_blocked()
    await h.callback(token, callback_event("CallDisconnected", "conn-1"))
    assert h.acs.hang_ups == []
    assert h.plane.calls == {}


async def test_call_ended_by_us_is_hung_up(h: Harness) -> None:
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    await h.call_dies(1)  # the stand-in ends with MODEL_CLOSED: the caller is still there
    await trio.testing.wait_all_tasks_blocked()
    assert h.acs.hang_ups == ["conn-1"]


async def test_media_that_never_connects_is_hung_up(
    h: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    await trio.sleep(31)
    assert h.acs.hang_ups == ["conn-1"]
    assert h.plane.calls == {}


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"not json", "application/json", 400),
        (b"{}", "text/plain", 415),
        (b'"a string"', "application/json", 400),
        (b"[" + b" " * (1024 * 1024) + b"]", "application/json", 413),
        (b'[{"eventType": "Microsoft.Storage.BlobCreated", "data": {}}]', "application/json", 200),
        (b'[{"eventType": "Microsoft.Communication.IncomingCall"}]', "application/json", 200),
        (b'[{"eventType": "Microsoft.Communication.IncomingCall", "data": {}}]', "", 200),
        (b"[1, null]", "application/json", 200),
    ],
    ids=[
        "not-json",
        "wrong-type",
        "not-array",
        "too-big",
        "unknown-type",
        "no-data",
        "no-context",
        "junk-items",
    ],
)
async def test_bad_incoming_call_bodies(
    h: Harness, body: bytes, content_type: str, status: int
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = await h.client.post("/api/incomingCall", data=body, headers=headers)
    assert response.status_code == status
    assert h.acs.answers == []


async def test_bad_callback_bodies_are_4xx_or_logged(h: Harness) -> None:
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    path = f"/api/callbacks/{h.acs.token_of(1)}"
    headers = {**h.auth(), "Content-Type": "application/json"}
    bad_json = await h.client.post(path, data=b"{", headers=headers)
    assert bad_json.status_code == 400
    no_id_event = {"type": "Microsoft.Communication.CallDisconnected", "data": {}}
    no_id = await h.client.post(path, json=[no_id_event], headers=h.auth())
    assert no_id.status_code == 200
    assert not h.plane.calls[h.acs.token_of(1)].stop_requested.is_set()


# -- health, readiness, drain -------------------------------------------------------------------


async def test_health_and_readiness_follow_the_lifespan(
    autojump_clock: trio.testing.MockClock,
) -> None:
    acs, calls = FakeAcsService(), StandInCalls()
    app = create_app(settings(), http_transport=acs.transport, run_call=calls.run_call)
    client = app.test_client()
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert await health.get_json() == {"status": "ok", "calls": 0, "draining": False}
    assert (await client.get("/readyz")).status_code == 503  # lifespan not running
    async with app.test_app():
        assert (await client.get("/readyz")).status_code == 200


async def test_shutdown_drains_then_ends_and_hangs_up_live_calls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _harness(grace_s=3) as h:
        await h.incoming(incoming_call_event("e-1", "ctx-1"))
        rt = h.app.extensions["acs_trio"]
        async with h.client.websocket(f"/ws/{h.acs.token_of(1)}", headers=h.auth()) as ws:
            await ws.send("hi")
            await ws.receive()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(rt.stop)
                await trio.testing.wait_all_tasks_blocked()
                assert (await h.client.get("/readyz")).status_code == 503
                await h.incoming(incoming_call_event("e-2", "ctx-2"))
                assert len(h.acs.answers) == 1  # refused while draining
                started = trio.current_time()
            assert trio.current_time() - started == pytest.approx(3)
            assert h.calls.summaries[0].end_reason is EndReason.SHUTDOWN
        assert h.acs.hang_ups == ["conn-1"]


# -- regressions ------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"null", b"[1, 2]", b'{"targets": "x"}', b'"text"'])
async def test_a_malformed_answer_body_drops_only_that_call(
    h: Harness, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    h.acs.answer_bodies = [body]
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    assert h.plane.calls == {}
    assert "answer_call failed" in caplog.text
    # The plane is still alive: the next call is answered, runs, and is hung up normally.
    assert (await h.client.get("/readyz")).status_code == 200
    response = await h.incoming(incoming_call_event("e-2", "ctx-2"))
    assert response.status_code == 200
    await h.call_dies(2)
    await trio.testing.wait_all_tasks_blocked()
    assert h.acs.hang_ups == ["conn-2"]
    assert h.plane.calls == {}


async def test_a_bug_in_one_supervisor_does_not_reach_other_calls(
    h: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rest = h.plane._rest
    real_answer = rest.answer_call

    async def broken_once(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(rest, "answer_call", real_answer)
        raise RuntimeError("a bug")

    monkeypatch.setattr(rest, "answer_call", broken_once)
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    assert "supervisor failed" in caplog.text
    assert "RuntimeError: a bug" in caplog.text  # logged with its traceback
    await h.incoming(incoming_call_event("e-2", "ctx-2"))
    await h.call_dies(1)
    await trio.testing.wait_all_tasks_blocked()
    assert h.acs.hang_ups == ["conn-1"]
    assert h.plane.calls == {}


async def test_media_close_then_call_disconnected_is_not_hung_up(
    h: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    token = h.acs.token_of(1)
    async with h.client.websocket(f"/ws/{token}", headers=h.auth()) as ws:
        await ws.send("hi")
        await ws.receive()
    await trio.sleep(2)  # the socket closed first; ACS's CallDisconnected follows
    assert h.calls.summaries[0].end_reason is EndReason.CALLER_HUNG_UP
    await h.callback(token, callback_event("CallDisconnected", "conn-1"))
    await trio.testing.wait_all_tasks_blocked()
    assert h.acs.hang_up_attempts == []
    assert h.plane.calls == {}


async def test_media_close_without_call_disconnected_is_hung_up(
    h: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    # A dropped socket (network, stream stop) looks like a caller close, but the call is still up.
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    async with h.client.websocket(f"/ws/{h.acs.token_of(1)}", headers=h.auth()) as ws:
        await ws.send("hi")
        await ws.receive()
    started = trio.current_time()
    await trio.sleep(4)
    assert h.acs.hang_up_attempts == []  # still waiting for CallDisconnected
    await trio.sleep(2)
    assert h.acs.hang_ups == ["conn-1"]
    assert trio.current_time() - started == pytest.approx(6)
    assert h.plane.calls == {}


async def test_hang_up_of_an_already_ended_call_is_harmless(
    h: Harness, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    h.acs.hang_up_statuses = [404]
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    async with h.client.websocket(f"/ws/{h.acs.token_of(1)}", headers=h.auth()):
        pass
    await trio.sleep(10)
    assert h.acs.hang_up_attempts == ["conn-1"]
    assert "already ended" in caplog.text
    assert h.plane.calls == {}


async def test_answer_error_after_media_attached_still_follows_the_call(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h.acs.answer_gate, h.acs.answer_status = trio.Event(), 400
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    token = h.acs.token_of(1)
    headers = {**h.auth(), "x-ms-call-connection-id": "conn-1"}
    async with h.client.websocket(f"/ws/{token}", headers=headers) as ws:
        await ws.send("early")
        assert await ws.receive() == "echo:early"
        h.acs.answer_gate.set()  # the answer fails although the call is connected
        await trio.testing.wait_all_tasks_blocked()
        assert "following it as answered" in caplog.text
        await h.callback(token, callback_event("CallDisconnected", "conn-1"))
        assert h.calls.summaries[0].end_reason is EndReason.CALL_DISCONNECTED
    await trio.testing.wait_all_tasks_blocked()
    assert h.acs.hang_ups == []
    assert h.plane.calls == {}


async def test_answer_timeout_after_media_attached_still_hangs_up(
    h: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    h.acs.answer_gate = trio.Event()  # never answers
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    headers = {**h.auth(), "x-ms-call-connection-id": "conn-1"}
    async with h.client.websocket(f"/ws/{h.acs.token_of(1)}", headers=headers) as ws:
        await trio.sleep(6)  # answer_s=5 passes
        assert h.plane.calls  # still followed
        await ws.send("die")  # the call ends on our side: it must be hung up
        with pytest.raises(WebsocketDisconnectError):
            await ws.receive()
    await trio.testing.wait_all_tasks_blocked()
    assert h.acs.hang_ups == ["conn-1"]
    assert h.plane.calls == {}


async def test_a_stuck_media_handler_does_not_delay_the_hang_up(
    h: Harness, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    async with h.client.websocket(f"/ws/{h.acs.token_of(1)}", headers=h.auth()) as ws:
        await ws.send("stuck")  # the call ends on our side, then a send blocks (shielded)
        started = trio.current_time()
        await h.plane.wait_idle()  # hung up and released
        assert trio.current_time() - started < 7  # media_done_after_end_s = 5, not 60
        assert h.acs.hang_ups == ["conn-1"]
        assert "still running" in caplog.text


async def test_a_failed_accept_still_reports_media_done(
    h: Harness, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from acs_trio.control.quart_media import MediaWebsocket

    async def broken_accept(*args: Any, **kwargs: Any) -> None:
        raise trio.BrokenResourceError("peer went away during the handshake")

    monkeypatch.setattr(MediaWebsocket, "accept", broken_accept)
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    await refusal_status(h.client, f"/ws/{h.acs.token_of(1)}", h.auth())
    await trio.sleep(1)
    assert h.acs.hang_ups == ["conn-1"]  # "media handler was cancelled": never dead air
    assert h.plane.calls == {}


async def test_media_socket_without_keys_is_accepted_then_closed_1011(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    # docs/protocols/acs.md §5.2: auth failures are refused; other errors close with 1011.
    h.acs.jwks_status = 503
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    async with h.client.websocket(f"/ws/{h.acs.token_of(1)}", headers=h.auth()) as ws:
        with pytest.raises(WebsocketDisconnectError) as closed:
            await ws.receive()
    assert closed.value.args[0] == 1011
    assert "1011" in caplog.text
    assert h.calls.handles == []
    callback = await h.callback(h.acs.token_of(1), callback_event("CallConnected", "conn-1"))
    assert callback.status_code == 503  # the HTTP callback still says 503


async def test_media_jwt_may_come_in_an_authentication_header(h: Harness) -> None:
    # docs/protocols/acs.md §5.2: the prose says "Authentication header", the sample reads Authorization.
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    headers = {"Authentication": h.acs.signer.bearer()}
    async with h.client.websocket(f"/ws/{h.acs.token_of(1)}", headers=headers) as ws:
        await ws.send("hi")
        assert await ws.receive() == "echo:hi"
    assert len(h.calls.handles) == 1


async def test_deeply_nested_json_is_400_on_both_webhooks(h: Harness) -> None:
    body = b"[" * 200_000  # under 1 MiB; json.loads would raise RecursionError
    headers = {"Content-Type": "application/json"}
    response = await h.client.post("/api/incomingCall", data=body, headers=headers)
    assert response.status_code == 400
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    callback = await h.client.post(
        f"/api/callbacks/{h.acs.token_of(1)}", data=body, headers={**headers, **h.auth()}
    )
    assert callback.status_code == 400


async def test_duplicate_memory_keeps_hashes_not_contexts(h: Harness) -> None:
    context = "c" * 16_000  # unauthenticated input: must not be kept 4096 times
    await h.incoming(incoming_call_event("e-1", context))
    await h.incoming(incoming_call_event("e-2", context))  # same context, new id: duplicate
    assert len(h.acs.answers) == 1
    assert all(len(key) <= 80 for key in h.plane._seen)
    huge = await h.incoming(incoming_call_event("e-3", "d" * 20_000))
    assert huge.status_code == 200  # logged and skipped, never retried forever
    assert len(h.acs.answers) == 1


async def test_hang_up_is_retried_through_server_errors(
    h: Harness, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    h.acs.hang_up_statuses = [503] * 8  # ACS struggles for a while (azure-core retries too)
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    started = trio.current_time()
    await h.call_dies(1)
    with trio.fail_after(30):
        await h.plane.wait_idle()
    assert h.acs.hang_ups == ["conn-1"]
    assert len(h.acs.hang_up_attempts) == 9
    assert trio.current_time() - started < 30
    assert "retrying" in caplog.text


async def test_hang_up_gives_up_at_its_total_deadline(
    h: Harness, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    h.acs.hang_up_statuses = [503] * 10_000
    await h.incoming(incoming_call_event("e-1", "ctx-1"))
    started = trio.current_time()
    await h.call_dies(1)
    await h.plane.wait_idle()
    assert trio.current_time() - started == pytest.approx(30, abs=1)
    assert h.acs.hang_ups == []
    assert "gave up" in caplog.text


def test_a_model_with_an_announced_shutdown_is_warned_at_start_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from dataclasses import replace

    from acs_trio.config import AgentSettings

    create_app(replace(settings(), agent=AgentSettings(model="gpt-realtime")))
    (record,) = [r for r in caplog.records if "realtime model" in r.getMessage()]
    assert record.levelname == "WARNING" and "2027-01-20" in record.getMessage()
    caplog.clear()
    create_app(settings())  # the default model is current
    assert "realtime model" not in caplog.text
    # So is the input transcription model (the default, gpt-4o-mini-transcribe, is not).
    caplog.clear()
    create_app(replace(settings(), agent=AgentSettings(transcription_model="whisper-1")))
    (record,) = [r for r in caplog.records if "transcription model" in r.getMessage()]
    assert record.levelname == "WARNING" and "2027-02-26" in record.getMessage()
    caplog.clear()
    create_app(replace(settings(), agent=AgentSettings(transcription_model="gpt-transcribe")))
    assert "shutdown date" not in caplog.text
