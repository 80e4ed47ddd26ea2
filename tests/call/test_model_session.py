"""The model session never fails silently: stories of one call under the mock clock.

A confirmed session, failed responses, a dropped or half-open link (reconnect with replay), the
session's time limit (recycle at a quiet moment), and the barge-in bookkeeping (truncate at the
played ms, delete what was never heard).  The fake model speaks the GA protocol
(tests/fakes.py); every number asserted is virtual time.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from acs_trio.call import model_session
from acs_trio.call.lifecycle import EndReason
from acs_trio.config import AgentSettings
from tests.call.test_call import LIMITS, start_call
from tests.fakes import FakeModel, Seen, pcm_tone

FAILED = {
    "type": "failed",
    "error": {"type": "server_error", "code": "rate_limit_exceeded", "message": "Rate limit"},
}
INCOMPLETE = {"type": "incomplete", "reason": "content_filter"}


def appended(seen: Seen) -> bytes:
    return b"".join(
        base64.b64decode(m["audio"])
        for _, m in seen.messages
        if m.get("type") == "input_audio_buffer.append"
    )


def items(seen: Seen) -> list[dict[str, Any]]:
    return [m["item"] for _, m in seen.messages if m.get("type") == "conversation.item.create"]


# --- 1. a confirmed session -----------------------------------------------------------------


async def test_a_rejected_session_update_ends_the_call_as_a_model_error(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    model = FakeModel(nursery)
    model.reject_session_update = True
    call = await start_call(nursery, agent=AgentSettings(greeting="Greet."), model=model)
    summary = await call.ended()
    assert summary.end_reason is EndReason.MODEL_ERROR
    assert summary.end_detail.startswith("session.update rejected: invalid_value")
    assert not summary.end_reason.caller_gone  # so the control plane hangs the call up
    assert summary.duration_s == 0
    # No greeting without the persona, and no retry: a new session would be refused the same.
    assert [m["type"] for _, m in model.seen.messages] == ["session.update"]
    assert len(model.connections) == 1
    assert call.acs.seen.closed is not None and call.acs.seen.closed.code == 1000


async def test_an_unconfirmed_session_is_retried_within_the_budget_then_ends(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    model = FakeModel(nursery)
    model.answer_session_update = False  # the service never says session.updated
    call = await start_call(nursery, model=model)
    summary = await call.ended()
    # 5 s per attempt; the 10 s budget starts at the first failure: attempts at 0, ~5, ~10.
    assert summary.end_reason is EndReason.MODEL_ERROR
    assert "no session.updated within 5s (after 2 reconnect attempts)" in summary.end_detail
    assert len(model.connections) == 3
    assert 15 <= summary.duration_s <= 15 + 2 * LIMITS.model_backoff_max_s


async def test_three_failed_responses_in_a_row_end_the_call(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    call = await start_call(nursery)
    model = call.model
    for status, details in [
        ("failed", FAILED),
        ("incomplete", INCOMPLETE),
        ("completed", None),  # a whole answer resets the count
        ("failed", FAILED),
        ("failed", FAILED),
    ]:
        response_id, _ = await model.start_response()
        await model.response_done(response_id, status, details)
        await trio.sleep(1)
    assert call.summary is None
    response_id, _ = await model.start_response()
    await model.response_done(response_id, "failed", FAILED)
    summary = await call.ended()
    assert summary.end_reason is EndReason.MODEL_ERROR
    assert summary.end_detail.startswith("3 responses in a row failed")
    assert summary.failed_responses == 5
    assert summary.duration_s == 5
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    # One WARNING per failed response, and the ending itself (not caused by the caller).
    responses = [w for w in warnings if "ending call:" not in w]
    assert sum("server_error/rate_limit_exceeded: Rate limit" in w for w in responses) == 4
    assert sum("incomplete: content_filter" in w for w in responses) == 1
    assert sum("ending call: model_error 3 responses in a row failed" in w for w in warnings) == 1


# --- 2. reconnect ---------------------------------------------------------------------------


async def test_a_drop_mid_answer_reconnects_replays_and_the_next_answer_plays(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    acs, model = call.acs, call.model
    await acs.send_metadata()
    nursery.start_soon(acs.stream, 3600)  # the caller's line
    await model.speech_started("item_u1")
    await trio.sleep(0.5)
    await model.speech_stopped("item_u1")
    await model.caller_transcript("item_u1", "When do you open?")
    await trio.sleep(0.3)
    response_id, item_id = await model.start_response()
    await model.output_item_added(response_id, item_id)
    # The answer streams at real-time pace: 100 ms of audio and its words every 100 ms.
    for word in ["We ", "open ", "at ", "nine ", "every "]:
        await model.audio_delta(response_id, item_id, pcm_tone(100, 2000))
        await model.transcript_delta(response_id, item_id, word)
        await trio.sleep(0.1)
    # 500 ms into the answer the connection dies without a close frame (1006).
    reconnected = model.new_connection
    dropped_at = trio.current_time()
    await model.streams[-1].inner.aclose()
    await reconnected.wait()
    assert trio.current_time() - dropped_at <= LIMITS.model_backoff_first_s  # first back-off
    await wait_all_tasks_blocked()
    # The new session: configuration, the conversation as heard, and the answer still owed.
    second = model.connections[1]
    kinds = [m["type"] for _, m in second.messages]
    assert kinds[:4] == [
        "session.update",
        "conversation.item.create",
        "conversation.item.create",
        "response.create",
    ]
    assert items(second) == [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "When do you open?"}],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "We open at nine every"}],
        },
    ]
    # It answers after its usual 300 ms.
    await trio.sleep(0.3)
    await model.speak(800, value=3000)
    await trio.sleep(3)
    frames = acs.audio_out()
    old = [t for t, pcm in frames if pcm == pcm_tone(20, 2000)]
    new = [t for t, pcm in frames if pcm == pcm_tone(20, 3000)]
    assert len(old) == 25 and len(new) == 40  # all of what was received, then the new answer
    heard_gap = new[0] - (old[0] + 0.5)  # silence between the two, as the caller hears it
    assert 0.3 <= heard_gap <= 0.3 + LIMITS.model_backoff_first_s
    # Caller audio policy: the gap's audio went to the new session; nothing lost or reordered.
    assert appended(model.connections[0]) + appended(second) == pcm_tone(3600, 1000)
    call.handle.end(EndReason.CALL_DISCONNECTED)
    summary = await call.ended()
    assert summary.model_reconnects == 1 and summary.gap_audio_dropped_ms == 0
    assert summary.model_gap_ms == [pytest.approx((new[0] - dropped_at - 0.3) * 1000, abs=1)]
    print(f"\nheard gap on a model drop: {heard_gap * 1000:.0f} ms")


async def test_rate_limited_reconnect_honours_retry_after_and_drops_old_gap_audio(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    acs, model = call.acs, call.model
    await acs.send_metadata()
    nursery.start_soon(acs.stream, 6000)
    await trio.sleep(1)
    model.refuse_with = [(429, 3.0)]
    reconnected = model.new_connection
    dropped_at = trio.current_time()
    assert model.ws is not None
    await model.ws.aclose(1011, "server error")
    await reconnected.wait()
    waited = trio.current_time() - dropped_at
    assert 3.0 <= waited <= 3.0 + LIMITS.model_backoff_first_s  # no sooner than Retry-After
    await trio.sleep(6)
    call.handle.end(EndReason.CALL_DISCONNECTED)
    summary = await call.ended()
    # Policy: at most 2 s of gap audio is kept (33 appends of 60 ms); the older is dropped.
    first, second = appended(model.connections[0]), appended(model.connections[1])
    assert summary.gap_audio_dropped_ms > 0
    assert len(first) + len(second) + summary.gap_audio_dropped_ms * 48 == 6000 * 48
    assert second.startswith(pcm_tone(1980, 1000))


async def test_when_the_budget_is_spent_the_call_ends_and_is_hung_up(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    await trio.sleep(1)
    call.model.refuse_with = [(503, None)] * 1000
    assert call.model.ws is not None
    await call.model.ws.aclose(1011, "server error")
    summary = await call.ended()
    assert summary.end_reason is EndReason.MODEL_CONNECT_FAILED
    assert "HTTP 503" in summary.end_detail and "reconnect attempts" in summary.end_detail
    assert not summary.end_reason.caller_gone
    assert summary.duration_s <= 1 + LIMITS.model_reconnect_budget_s
    assert call.acs.seen.closed is not None and call.acs.seen.closed.code == 1000


# --- 3. recycle before the limit ------------------------------------------------------------


async def test_the_session_is_replaced_at_a_quiet_moment_before_it_expires(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def wall_clock() -> float:
        return 1_800_000_000.0 + trio.current_time()

    monkeypatch.setattr(model_session, "wall_clock", wall_clock)
    model = FakeModel(nursery, session_lifetime_s=600, wall_clock=wall_clock)
    limits = replace(LIMITS, idle_timeout_s=5000, media_timeout_s=5000, max_duration_s=5000)
    call = await start_call(nursery, limits=limits, model=model)
    t0 = model.connected_at[0]
    await model.speech_started("item_u1")
    await model.speech_stopped("item_u1")
    await model.caller_transcript("item_u1", "Hello?")
    response_id, item_id = await model.start_response()
    await model.output_item_added(response_id, item_id)
    await model.transcript_delta(response_id, item_id, "Hi, how can I help?")
    await model.audio_delta(response_id, item_id, pcm_tone(500))
    await model.finish_response(response_id, item_id)
    # From expires_at - 120 s (480 s) the bridge looks for a quiet moment; the agent is busy
    # answering from 470 s to 490 s.
    await trio.sleep_until(t0 + 470)
    busy_id, _ = await model.start_response()
    await trio.sleep_until(t0 + 490)
    replaced = model.new_connection
    await model.response_done(busy_id, "completed")
    await replaced.wait()
    assert 490 <= trio.current_time() - t0 <= 490.1  # the first quiet poll
    await wait_all_tasks_blocked()
    first, second = model.connections
    assert first.closed is not None and first.closed.code == 1000  # closed politely
    assert [m["type"] for _, m in second.messages] == [
        "session.update",
        "conversation.item.create",
        "conversation.item.create",
    ]  # nothing owed: no response.create
    assert [i["content"][0]["text"] for i in items(second)] == ["Hello?", "Hi, how can I help?"]
    # The call goes on in the new session.
    await model.speak(200)
    await trio.sleep(1)
    assert len(call.acs.audio_out()) == 25 + 10
    call.handle.end(EndReason.CALL_DISCONNECTED)
    summary = await call.ended()
    assert (summary.session_recycles, summary.model_reconnects) == (1, 0)
    assert summary.model_gap_ms == [0.0]


# --- 4. liveness ----------------------------------------------------------------------------


async def test_a_half_open_link_is_detected_by_the_ping(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    model = call.model
    t0 = model.connected_at[0]
    await trio.sleep(1)
    model.freeze()  # no close, no error: the peer just stops answering
    replaced = model.new_connection
    await replaced.wait()
    # Ping at 10 s, no pong by 15 s: a new session right after (first back-off).
    assert 15 <= trio.current_time() - t0 <= 15 + LIMITS.model_backoff_first_s
    await wait_all_tasks_blocked()
    assert [m["type"] for _, m in model.seen.messages] == ["session.update"]
    call.handle.end(EndReason.CALL_DISCONNECTED)
    summary = await call.ended()
    assert summary.model_reconnects == 1
    assert summary.end_reason is EndReason.CALL_DISCONNECTED


# --- 5. exact barge-in bookkeeping ----------------------------------------------------------


@pytest.mark.parametrize("first", ["delta", "speech_started"])
async def test_barge_in_race_deletes_the_unheard_answer_and_leaves_the_greeting(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, first: str
) -> None:
    call = await start_call(nursery, agent=AgentSettings(greeting="Greet."))
    acs, model = call.acs, call.model
    greeting_id, greeting_item = await model.start_response()
    await model.output_item_added(greeting_id, greeting_item)
    for _ in range(10):
        await model.audio_delta(greeting_id, greeting_item, pcm_tone(100, 2000))
    await model.finish_response(greeting_id, greeting_item)
    await trio.sleep(2)  # the greeting has played out
    answer_id, answer_item = await model.start_response()
    await model.output_item_added(answer_id, answer_item)
    # The new answer's first delta and the caller's speech arrive together, in either order.
    if first == "delta":
        await model.audio_delta(answer_id, answer_item, pcm_tone(100, 3000))
        await model.speech_started()
    else:
        await model.speech_started()
        await model.audio_delta(answer_id, answer_item, pcm_tone(100, 3000))
    await model.response_done(
        answer_id, "cancelled", {"type": "cancelled", "reason": "turn_detected"}
    )
    await wait_all_tasks_blocked()
    assert model.events("conversation.item.truncate") == []  # the greeting was heard whole
    assert [e["item_id"] for e in model.events("conversation.item.delete")] == [answer_item]
    answer_frames = [t for t, pcm in acs.audio_out() if pcm == pcm_tone(20, 3000)]
    # At most the frame already on its way, and a StopAudio at that very instant.
    assert len(answer_frames) <= 1
    assert all(t in acs.stop_audio_times() for t in answer_frames)
    call.handle.end(EndReason.CALL_DISCONNECTED)
    summary = await call.ended()
    assert summary.items_deleted == 1 and summary.truncated_at_ms == []


@pytest.mark.parametrize(
    ("barge_in_s", "played_ms"),
    [
        (0.25, 250),  # during the first chunk
        (0.40, 300),  # the model stalled: ACS ran dry after 300 ms
        (0.77, 570),  # 300 + 270 ms of the second chunk (it started playing at 0.5 s)
        (1.10, 900),
    ],
)
async def test_truncate_is_exact_to_the_played_ms(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    barge_in_s: float,
    played_ms: int,
) -> None:
    call = await start_call(nursery)
    model = call.model
    t0 = trio.current_time()
    response_id, item_id = await model.start_response()
    await model.output_item_added(response_id, item_id)
    await model.audio_delta(response_id, item_id, pcm_tone(300, 2000))
    script = [(0.5, "delta"), (barge_in_s, "barge-in")]
    for at, what in sorted(script):
        await trio.sleep_until(t0 + at)
        if what == "delta":  # the rest of the answer, after a 200 ms stall of the model
            await model.audio_delta(response_id, item_id, pcm_tone(700, 2000))
        else:
            await model.speech_started()
    await wait_all_tasks_blocked()
    (truncate,) = model.events("conversation.item.truncate")
    assert (truncate["item_id"], truncate["audio_end_ms"]) == (item_id, played_ms)
    heard = sum(len(pcm) for _, pcm in call.acs.audio_out()) / 48  # ms written to ACS
    assert heard >= played_ms  # never more than was sent; StopAudio flushed the difference
    call.handle.end(EndReason.CALL_DISCONNECTED)
    await call.ended()


async def test_a_barge_in_on_audio_of_a_replaced_session_is_replayed_as_heard(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    model = call.model
    t0 = trio.current_time()
    response_id, item_id = await model.start_response()
    await model.output_item_added(response_id, item_id)
    await model.transcript_delta(response_id, item_id, "One two three four five six seven eight")
    await model.audio_delta(response_id, item_id, pcm_tone(1000, 2000))  # a burst: 1 s queued
    await trio.sleep_until(t0 + 0.1)
    reconnected = model.new_connection
    await model.streams[-1].inner.aclose()  # the link drops; the old answer keeps playing
    await reconnected.wait()
    await trio.sleep_until(t0 + 0.5)
    await model.speech_started()  # in the new session, over the old session's audio
    await wait_all_tasks_blocked()
    second = model.connections[1]
    # The old item is not the new session's: no truncate or delete is sent for it...
    assert {m["type"] for _, m in second.messages} & {
        "conversation.item.truncate",
        "conversation.item.delete",
    } == set()
    assert call.acs.stop_audio_times() == [t0 + 0.5]
    # ...but the log learned that half of it was heard: the next session is told so.
    reconnected = model.new_connection
    await model.streams[-1].inner.aclose()
    await reconnected.wait()
    await wait_all_tasks_blocked()
    assert [i["content"][0]["text"] for i in items(model.connections[2])] == ["One two three four…"]
    call.handle.end(EndReason.CALL_DISCONNECTED)
    summary = await call.ended()
    assert summary.model_reconnects == 2 and summary.truncated_at_ms == []


async def test_a_session_that_drops_right_after_it_is_confirmed_does_not_reset_the_budget(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    model = call.model
    await trio.sleep(1)

    async def flap() -> None:
        # The service accepts, confirms the session, then drops it at once, every time.
        while True:
            await model.wait_for("session.update")
            await wait_all_tasks_blocked()  # session.updated has been read: the session is live
            reconnected = model.new_connection
            assert model.ws is not None
            await model.ws.aclose(1011, "server error")
            await reconnected.wait()

    nursery.start_soon(flap)
    # One outage, however many sessions it confirms: the call ends when the budget is spent,
    # not at the idle timeout (120 s) after hundreds of handshakes.
    summary = await call.ended()
    assert summary.end_reason is EndReason.MODEL_CLOSED
    assert "reconnect attempts" in summary.end_detail
    assert summary.duration_s <= 1 + LIMITS.model_reconnect_budget_s
    assert len(model.connections) < 30


async def test_caller_audio_is_neither_lost_nor_reordered_across_a_recycle(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def wall_clock() -> float:
        return 1_800_000_000.0 + trio.current_time()

    monkeypatch.setattr(model_session, "wall_clock", wall_clock)
    model = FakeModel(nursery, session_lifetime_s=200, wall_clock=wall_clock)
    limits = replace(LIMITS, idle_timeout_s=5000, media_timeout_s=5000)
    call = await start_call(nursery, model=model, limits=limits)
    await call.acs.send_metadata()
    await trio.sleep(75)
    # The caller's line carries background noise the model's VAD ignores: the session is quiet
    # when it is replaced (at 80 s), in the middle of the caller's audio.
    nursery.start_soon(call.acs.stream, 10_000)
    replaced = model.new_connection
    await replaced.wait()
    await trio.sleep(10)
    assert len(model.connections) == 2
    first, second = appended(model.connections[0]), appended(model.connections[1])
    # Everything but the last, partial 60 ms batch (still being collected) went to a session.
    assert first and second
    assert first + second == pcm_tone(10_000 // LIMITS.append_batch_ms * LIMITS.append_batch_ms)
    call.handle.end(EndReason.CALL_DISCONNECTED)
    summary = await call.ended()
    assert summary.session_recycles == 1 and summary.gap_audio_dropped_ms == 0


async def test_a_session_that_opens_already_near_its_expiry_is_not_recycled_in_a_loop(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Our clock is 30 min ahead of the service's: every expires_at looks 5 s away.
    def wall_clock() -> float:
        return 1_800_000_000.0 + trio.current_time()

    monkeypatch.setattr(model_session, "wall_clock", wall_clock)
    model = FakeModel(nursery, session_lifetime_s=5, wall_clock=wall_clock, connect_delay_s=0.05)
    limits = replace(LIMITS, idle_timeout_s=5000, media_timeout_s=5000)
    call = await start_call(nursery, model=model, limits=limits)
    await trio.sleep(3)
    # A fresh session would be "expiring" just the same: replacing it cannot help.
    assert len(model.connections) == 1
    call.handle.end(EndReason.CALL_DISCONNECTED)
    summary = await call.ended()
    assert summary.session_recycles == 0


async def test_a_drop_before_the_greeting_is_heard_asks_the_new_session_to_greet(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery, agent=AgentSettings(greeting="Greet."))
    model = call.model
    assert [m["type"] for _, m in model.seen.messages][-1] == "response.create"
    # The link drops before the greeting's response even started: nothing was heard.
    reconnected = model.new_connection
    await model.streams[-1].inner.aclose()
    await reconnected.wait()
    await wait_all_tasks_blocked()
    assert [m["type"] for _, m in model.seen.messages] == [
        "session.update",
        "conversation.item.create",
        "response.create",
    ]
    assert items(model.seen)[0]["content"][0]["text"] == "Greet."
    # Once the greeting has played, a later session is not asked to greet again.
    response_id, item_id = await model.start_response()
    await model.output_item_added(response_id, item_id)
    await model.audio_delta(response_id, item_id, pcm_tone(300))
    await model.finish_response(response_id, item_id)
    await trio.sleep(1)
    reconnected = model.new_connection
    await model.streams[-1].inner.aclose()
    await reconnected.wait()
    await wait_all_tasks_blocked()
    assert [m["type"] for _, m in model.seen.messages] == ["session.update"]
    call.handle.end(EndReason.CALL_DISCONNECTED)
    await call.ended()


async def test_an_answer_whose_audio_never_arrived_is_not_replayed(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    model = call.model
    await model.speech_started("item_u1")
    await model.speech_stopped("item_u1")
    await model.caller_transcript("item_u1", "When do you open?")
    response_id, item_id = await model.start_response()
    await model.output_item_added(response_id, item_id)
    # The transcript runs ahead of the audio; the link drops before the first audio delta.
    await model.transcript_delta(response_id, item_id, "We open at nine.")
    await wait_all_tasks_blocked()
    reconnected = model.new_connection
    await model.streams[-1].inner.aclose()
    await reconnected.wait()
    await wait_all_tasks_blocked()
    # The caller heard none of it: the new session is told the question only, and answers it.
    assert [i["content"][0]["text"] for i in items(model.seen)] == ["When do you open?"]
    assert model.events("response.create")
    call.handle.end(EndReason.CALL_DISCONNECTED)
    await call.ended()
