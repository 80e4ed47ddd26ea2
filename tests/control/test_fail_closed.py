"""Issue 9, one story per point: nobody but Event Grid makes the server answer, no caller is left
ringing or in dead air, and one hostile client cannot starve the calls in progress.

Same harness as test_app.py (quart-trio's test client, ACS REST + JWKS as a MockTransport, the
stand-in echo call), under the mock clock where time matters.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import trio
import trio.testing
from quart.testing.connections import WebsocketDisconnectError

from acs_trio.call.lifecycle import EndReason
from acs_trio.config import MAX_BODY_BYTES
from acs_trio.control.control_plane import Admission
from acs_trio.testing.tokens import rsa_key
from tests.acs_service import FakeAcsService, callback_event, incoming_call_event
from tests.control.test_app import SECRET, WEBHOOK, _harness, refusal_status


def _flood(count: int, caller: str = "+1\nFAKE LOG LINE: admin logged in") -> bytes:
    """The review's H1 body: thousands of minimal IncomingCall events, a forged log line each."""
    events = [
        {
            "id": str(n),
            "eventType": "Microsoft.Communication.IncomingCall",
            "data": {
                "incomingCallContext": f"x{n}",
                "from": {"kind": "phoneNumber", "phoneNumber": {"value": caller}},
            },
        }
        for n in range(count)
    ]
    return json.dumps(events).encode()


# -- 1, 2: webhook authentication and bounded work ----------------------------------------------


async def test_a_flood_without_the_secret_answers_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async with _harness() as h:
        body = _flood(4500)  # ~0.9 MB: the review's H1 request
        json_type = {"Content-Type": "application/json"}
        for headers, path in [
            (json_type, "/api/incomingCall"),
            ({**json_type, "X-Incoming-Call-Secret": "guess"}, "/api/incomingCall"),
            (json_type, "/api/incomingCall?code=" + SECRET[:-1]),
        ]:
            response = await h.client.post(path, data=body, headers=headers)
            assert response.status_code == 401
        await trio.testing.wait_all_tasks_blocked()
        assert h.acs.answers == [] and h.acs.rejects == []
        assert h.plane.calls == {}
        assert (await h.client.get("/readyz")).status_code == 200  # nothing taken
        # With the secret the same body is refused whole: 64 KiB cap, no event decoded.
        big = await h.client.post("/api/incomingCall", data=body, headers={**json_type, **WEBHOOK})
        assert big.status_code == 413
        # A batch under the byte cap but over the event cap is refused whole too.
        many = _flood(40)
        assert len(many) < MAX_BODY_BYTES
        batch = await h.client.post(
            "/api/incomingCall", data=many, headers={**json_type, **WEBHOOK}
        )
        assert batch.status_code == 413
        await trio.testing.wait_all_tasks_blocked()
        assert h.acs.answers == []
        assert caplog.text.count("\n") < 50  # a few lines, not 17,402


async def test_the_secret_may_come_in_the_query() -> None:
    async with _harness() as h:
        response = await h.client.post(
            f"/api/incomingCall?code={SECRET}", json=[incoming_call_event("e-1", "ctx-1")]
        )
        await trio.testing.wait_all_tasks_blocked()
        assert response.status_code == 200
        assert [a["incomingCallContext"] for a in h.acs.answers] == ["ctx-1"]


async def test_forged_log_lines_stay_on_their_line(caplog: pytest.LogCaptureFixture) -> None:
    async with _harness() as h:
        caplog.set_level(logging.INFO)
        event = incoming_call_event("e-1\nFAKE LOG LINE: event", "ctx-1")
        event["data"]["from"]["phoneNumber"]["value"] = "+1\nFAKE LOG LINE: caller" + "9" * 5000
        await h.incoming(event)
        assert h.acs.answers  # a real call is still answered
        for record in caplog.records:
            message = record.getMessage()
            assert "\nFAKE" not in message, message
            assert len(message) < 1000
        assert "FAKE LOG LINE: caller" in caplog.text  # escaped and cut, not dropped


async def test_answers_are_rate_limited_and_a_refused_event_is_not_remembered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _harness(answer_rate_per_s=1.0, answer_burst=2) as h:
        assert (await h.incoming(incoming_call_event("e-1", "ctx-1"))).status_code == 200
        assert (await h.incoming(incoming_call_event("e-2", "ctx-2"))).status_code == 200
        third = incoming_call_event("e-3", "ctx-3")
        limited = await h.incoming(third)
        assert limited.status_code == 503  # Event Grid redelivers
        assert len(h.acs.answers) == 2
        await trio.sleep(1.0)
        redelivered = await h.incoming(third)  # same event id: not a "duplicate"
        assert redelivered.status_code == 200
        assert [a["incomingCallContext"] for a in h.acs.answers][-1] == "ctx-3"


# -- 3: no caller left ringing ------------------------------------------------------------------


async def test_when_full_the_caller_is_rejected_busy_at_once() -> None:
    async with _harness(max_calls=1) as h:
        await h.incoming(incoming_call_event("e-1", "ctx-1"))
        full = await h.incoming(incoming_call_event("e-2", "ctx-2"))
        assert full.status_code == 200  # decided: no redelivery wanted
        assert [a["incomingCallContext"] for a in h.acs.answers] == ["ctx-1"]
        assert h.acs.rejects == [{"incomingCallContext": "ctx-2", "callRejectReason": "busy"}]


async def test_when_full_the_caller_goes_to_the_overflow_target() -> None:
    async with _harness(max_calls=1, overflow_target="+14255550199") as h:
        await h.incoming(incoming_call_event("e-1", "ctx-1"))
        await h.incoming(incoming_call_event("e-2", "ctx-2"))
        [redirect] = h.acs.redirects
        assert redirect["incomingCallContext"] == "ctx-2"
        assert "+14255550199" in json.dumps(redirect["target"])
        assert h.acs.rejects == []


async def test_draining_answers_503_so_event_grid_redelivers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _harness(grace_s=3) as h:
        rt = h.app.extensions["acs_trio"]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rt.stop)
            await trio.testing.wait_all_tasks_blocked()
            refused = await h.incoming(incoming_call_event("e-1", "ctx-1"))
            assert refused.status_code == 503
            assert refused.headers["Retry-After"]
        assert h.acs.answers == [] and h.acs.rejects == []
        assert h.plane._seen == {}  # not remembered: another instance may answer the retry


async def test_not_ready_answers_503() -> None:
    acs = FakeAcsService()
    from acs_trio.control.app import create_app
    from tests.control.test_app import settings

    app = create_app(settings(), http_transport=acs.transport)
    response = await app.test_client().post(
        "/api/incomingCall", json=[incoming_call_event("e-1", "ctx-1")], headers=WEBHOOK
    )
    assert response.status_code == 503  # lifespan not running yet


async def test_without_jwks_keys_incoming_calls_get_503_not_an_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The JWKS cannot be fetched at start-up: no media socket or callback could be verified, so
    # answering would leave the caller in dead air.  Event Grid must redeliver instead.
    acs = FakeAcsService()
    acs.jwks_status = 503
    async with _harness(acs) as h:
        refused = await h.incoming(incoming_call_event("e-1", "ctx-1"))
        assert refused.status_code == 503
        assert h.acs.answers == [] and h.plane._seen == {}
        acs.jwks_status = 200
        await trio.sleep(15)  # the verifier's retry loads the keys
        assert (await h.incoming(incoming_call_event("e-1", "ctx-1"))).status_code == 200
        assert len(h.acs.answers) == 1


async def test_an_overloaded_event_loop_turns_new_callers_away() -> None:
    async with _harness() as h:
        lag = h.app.extensions["acs_trio"].loop_lag
        for _ in range(8):
            lag.record(0.050)  # 50 ms late on every tick, over MAX_LOOP_LAG_MS (20)
        assert (await h.client.get("/readyz")).status_code == 503
        await h.incoming(incoming_call_event("e-1", "ctx-1"))
        assert h.acs.answers == []
        assert h.acs.rejects == [{"incomingCallContext": "ctx-1", "callRejectReason": "busy"}]
        for _ in range(8):
            lag.record(0.0)
        await h.incoming(incoming_call_event("e-2", "ctx-2"))
        assert [a["incomingCallContext"] for a in h.acs.answers] == ["ctx-2"]


# -- 4: no caller left in silence ---------------------------------------------------------------


async def test_a_late_media_socket_after_an_answer_timeout_is_hung_up(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with _harness() as h:
        h.acs.answer_gate = trio.Event()  # ACS answers, but its response is slow
        await h.incoming(incoming_call_event("e-1", "ctx-1"))
        await trio.sleep(6)  # answer_s = 5 passes
        assert h.plane.live_calls == 0
        h.acs.answer_gate.set()
        headers = {**h.auth(), "x-ms-call-connection-id": "conn-1"}
        status = await refusal_status(h.client, f"/ws/{h.acs.media_token_of(1)}", headers)
        assert status == 403  # no call runs on it...
        await trio.testing.wait_all_tasks_blocked()
        assert h.acs.hang_ups == ["conn-1"]  # ...and the connected caller is hung up
        assert h.calls.handles == []
        await h.plane.wait_idle()


async def test_a_late_call_connected_after_an_answer_timeout_is_hung_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _harness() as h:
        h.acs.answer_gate = trio.Event()
        await h.incoming(incoming_call_event("e-1", "ctx-1"))
        await trio.sleep(6)
        h.acs.answer_gate.set()
        token = h.acs.token_of(1)
        response = await h.callback(token, callback_event("CallConnected", "conn-7"))
        assert response.status_code == 200
        await trio.testing.wait_all_tasks_blocked()
        assert h.acs.hang_ups == ["conn-7"]
        await h.plane.wait_idle()


async def test_a_failed_answer_that_never_connects_is_forgotten(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _harness() as h:
        h.acs.answer_gate = trio.Event()
        await h.incoming(incoming_call_event("e-1", "ctx-1"))
        await trio.sleep(70)  # answer timeout + the 60 s watch
        assert h.plane.calls == {} and h.acs.hang_up_attempts == []


# -- 5: a re-established media socket is taken back ---------------------------------------------


async def test_a_re_established_media_socket_resumes_the_call(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with _harness() as h:
        await h.incoming(incoming_call_event("e-1", "ctx-1"))
        path = f"/ws/{h.acs.media_token_of(1)}"
        headers = {**h.auth(), "x-ms-call-connection-id": "conn-1"}
        async with h.client.websocket(path, headers=headers) as ws:
            await ws.send("before")
            assert await ws.receive() == "echo:before"
        await trio.sleep(1)  # a network blip; ACS re-establishes the stream
        # Another connection id is not this call's stream.
        wrong = {**h.auth(), "x-ms-call-connection-id": "conn-2"}
        assert await refusal_status(h.client, path, wrong) == 403
        async with h.client.websocket(path, headers={**h.auth(), **headers}) as ws:
            await ws.send("after")
            assert await ws.receive() == "echo:after"
            await trio.sleep(10)  # well past the 5 s grace: still up, not hung up
            assert h.acs.hang_up_attempts == []
            await ws.send("still")
            assert await ws.receive() == "echo:still"
        assert "re-established" in caplog.text
        assert len(h.calls.handles) == 2 and h.calls.handles[0] is h.calls.handles[1]
        await h.callback(h.acs.token_of(1), callback_event("CallDisconnected", "conn-1"))
        await h.plane.wait_idle()
        assert h.acs.hang_up_attempts == []


async def test_a_re_established_media_socket_takes_over_from_a_lingering_one(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A network drop with no close seen: our old socket still looks open (until TCP_USER_TIMEOUT)
    when ACS reconnects with the same connection id and a fresh JWT.  The old one is closed and
    the call resumes on the new one; nobody hangs up."""
    async with _harness() as h:
        await h.incoming(incoming_call_event("e-1", "ctx-1"))
        path = f"/ws/{h.acs.media_token_of(1)}"
        headers = {**h.auth(), "x-ms-call-connection-id": "conn-1"}
        async with h.client.websocket(path, headers=headers) as old:
            await old.send("before")
            assert await old.receive() == "echo:before"
            # Another call's id, or none, is not this call's stream: the old socket carries on.
            wrong = {**h.auth(), "x-ms-call-connection-id": "conn-2"}
            assert await refusal_status(h.client, path, wrong) == 403
            assert await refusal_status(h.client, path, h.auth()) == 403
            await old.send("still mine")
            assert await old.receive() == "echo:still mine"
            await trio.sleep(1)  # the drop: ACS reconnects, we have seen no close
            async with h.client.websocket(path, headers={**h.auth(), **headers}) as new:
                with pytest.raises(WebsocketDisconnectError), trio.fail_after(1):
                    await old.receive()  # closed by us at once
                await new.send("after")
                assert await new.receive() == "echo:after"
                await trio.sleep(10)  # well past every grace: still up, not hung up
                assert h.acs.hang_up_attempts == []
                await new.send("still")
                assert await new.receive() == "echo:still"
        assert "re-established" in caplog.text
        assert len(h.calls.handles) == 2 and h.calls.handles[0] is h.calls.handles[1]
        await h.callback(h.acs.token_of(1), callback_event("CallDisconnected", "conn-1"))
        await h.plane.wait_idle()
        assert h.acs.hang_up_attempts == []


async def test_an_old_socket_that_ignores_the_end_is_cancelled_within_the_takeover_deadline(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with _harness() as h:
        await h.incoming(incoming_call_event("e-1", "ctx-1"))
        path = f"/ws/{h.acs.media_token_of(1)}"
        headers = {**h.auth(), "x-ms-call-connection-id": "conn-1"}
        async with h.client.websocket(path, headers=headers) as old:
            await old.send("before")
            assert await old.receive() == "echo:before"
            h.calls.handles[0].bind(lambda: None)  # its call no longer hears an end request
            started = trio.current_time()
            async with h.client.websocket(path, headers={**h.auth(), **headers}) as new:
                await new.send("after")
                assert await new.receive() == "echo:after"
                assert trio.current_time() - started == pytest.approx(2.0)  # media_takeover_s
                await trio.sleep(10)
                assert h.acs.hang_up_attempts == []
        assert "still open after 2.0s: cancelled" in caplog.text
        await h.callback(h.acs.token_of(1), callback_event("CallDisconnected", "conn-1"))
        await h.plane.wait_idle()
        assert h.acs.hang_up_attempts == []


async def test_a_socket_for_an_ending_call_does_not_take_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _harness() as h:
        await h.incoming(incoming_call_event("e-1", "ctx-1"))
        path = f"/ws/{h.acs.media_token_of(1)}"
        headers = {**h.auth(), "x-ms-call-connection-id": "conn-1"}
        async with h.client.websocket(path, headers=headers) as old:
            await old.send("stuck")  # the call ends itself, its handler blocked in a send
            await trio.testing.wait_all_tasks_blocked()
            assert await refusal_status(h.client, path, {**h.auth(), **headers}) == 403
            await trio.sleep(6)  # the supervisor's bounded wait, then the hang-up
            assert h.acs.hang_ups == ["conn-1"]
        assert len(h.calls.handles) == 1


async def test_a_media_socket_after_the_grace_is_refused_and_the_call_hung_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _harness() as h:
        await h.incoming(incoming_call_event("e-1", "ctx-1"))
        path = f"/ws/{h.acs.media_token_of(1)}"
        headers = {**h.auth(), "x-ms-call-connection-id": "conn-1"}
        async with h.client.websocket(path, headers=headers):
            pass
        await trio.sleep(6)
        assert h.acs.hang_ups == ["conn-1"]
        assert await refusal_status(h.client, path, headers) == 403


# -- 7: keys ------------------------------------------------------------------------------------


async def test_a_key_rotation_gets_through_junk_kid_traffic(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _harness() as h:
        await h.incoming(incoming_call_event("e-1", "ctx-1"))
        fetches = h.acs.signer.fetches
        junk = {"Authorization": h.acs.signer.bearer(kid="junk", key=rsa_key("attacker"))}
        for n in range(10):  # an attacker burns the anonymous refresh budget
            response = await h.client.post(f"/api/callbacks/anything-{n}", json=[], headers=junk)
            assert response.status_code == 401
            await trio.sleep(2)
        assert h.acs.signer.fetches - fetches == 1  # one per 60 s: the JWKS is not hammered
        # ACS rotates its keys; the first media socket signed with the new key must get in.
        h.acs.signer.rotate("key-2")
        headers = {"Authorization": h.acs.signer.bearer()}
        async with h.client.websocket(f"/ws/{h.acs.media_token_of(1)}", headers=headers) as ws:
            await ws.send("hi")
            assert await ws.receive() == "echo:hi"


async def test_a_key_removed_from_the_jwks_stops_being_trusted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _harness() as h:
        await h.incoming(incoming_call_event("e-1", "ctx-1"))
        token = h.acs.token_of(1)
        old = h.acs.signer.bearer(7200, kid="key-1")
        assert (
            await h.client.post(f"/api/callbacks/{token}", json=[], headers={"Authorization": old})
        ).status_code == 200
        h.acs.signer.rotate("key-2")
        del h.acs.signer.keys["key-1"]  # withdrawn from the JWKS
        await trio.sleep(3601)  # the timer refresh (JWKS_MAX_AGE_S)
        response = await h.client.post(
            f"/api/callbacks/{token}", json=[], headers={"Authorization": old}
        )
        assert response.status_code == 401


async def test_the_callback_token_does_not_open_the_media_route_nor_the_reverse() -> None:
    async with _harness() as h:
        await h.incoming(incoming_call_event("e-1", "ctx-1"))
        callback_token, media_token = h.acs.token_of(1), h.acs.media_token_of(1)
        assert callback_token != media_token
        assert await refusal_status(h.client, f"/ws/{callback_token}", h.auth()) == 403
        event = callback_event("CallConnected", "conn-1")
        assert (await h.callback(media_token, event)).status_code == 404
        assert h.calls.handles == [] and h.plane.calls  # the call itself is untouched


# -- 7: secrets stay secret ---------------------------------------------------------------------


async def test_tokens_and_contexts_are_not_in_reprs() -> None:
    async with _harness() as h:
        await h.incoming(incoming_call_event("e-1", "ctx-secret-context"))
        [record] = h.plane.calls.values()
        text = repr(record)
        assert record.token not in text and record.media_token not in text
        assert "ctx-secret-context" not in text
        settings = h.app.extensions["acs_trio"].settings
        assert SECRET not in repr(settings)
        assert "QUJDRA==" not in repr(settings)


async def test_quart_exception_lines_do_not_carry_the_call_token(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with _harness() as h:
        await h.incoming(incoming_call_event("e-1", "ctx-1"))
        token = h.acs.token_of(1)

        def broken(*args: Any, **kwargs: Any) -> bool:
            raise RuntimeError("a bug in a route")

        monkeypatch.setattr(h.plane, "on_callback", broken)
        response = await h.callback(token, callback_event("CallConnected", "conn-1"))
        assert response.status_code == 500
        assert "Exception on request POST /api/callbacks/" in caplog.text
        assert token not in caplog.text


async def test_unknown_media_token_costs_no_jwks_work() -> None:
    async with _harness() as h:
        fetches = h.acs.signer.fetches
        headers = {"Authorization": h.acs.signer.bearer(kid="junk", key=rsa_key("attacker"))}
        assert await refusal_status(h.client, "/ws/nope", headers) == 403
        assert h.acs.signer.fetches == fetches


def test_admission_outcomes_say_whether_event_grid_should_retry() -> None:
    assert {a for a in Admission if a.redeliver} == {
        Admission.NOT_READY,
        Admission.DRAINING,
        Admission.RATE_LIMITED,
        Admission.UNAVAILABLE,  # shared state (REDIS_URL) unreachable: another instance may take it
    }
    assert EndReason.CALLER_HUNG_UP.caller_gone


async def test_the_loop_lag_monitor_sees_a_blocked_event_loop() -> None:
    import time

    from acs_trio.control.loop_lag import LoopLag

    monitor = LoopLag(interval_s=0.01, window=50)
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run)
        await trio.sleep(0.05)
        time.sleep(0.2)  # noqa: ASYNC251 - the point: something blocks the loop
        await trio.sleep(0.03)
        assert monitor.worst_s >= 0.15  # the stall is in the recent window
        assert monitor.max_s >= 0.15
        nursery.cancel_scope.cancel()


async def test_a_late_callback_for_an_ended_call_is_200_an_unknown_token_404(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with _harness() as h:
        await h.incoming(incoming_call_event("e-1", "ctx-1"))
        await h.call_dies(1)
        await h.plane.wait_idle()
        assert h.acs.hang_ups == ["conn-1"]
        late = await h.callback(h.acs.token_of(1), callback_event("CallDisconnected", "conn-1"))
        assert late.status_code == 200
        junk = await h.callback("x" * 43, callback_event("CallDisconnected", "conn-1"))
        assert junk.status_code == 404
        assert "for an unknown call" in caplog.text
