"""Stories of whole calls through ``run_call``, under the mock clock.

Each test arranges a fake ACS and a fake realtime model (real wire formats over in-memory
trio-websocket pairs), drives the call, and asserts on what each peer saw and when.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from functools import partial

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from acs_trio.call.bridge import run_call
from acs_trio.call.lifecycle import CallHandle, CallIds, CallSummary, EndReason
from acs_trio.config import AgentSettings, CallLimits
from acs_trio.control.model_ws import ModelConnector
from tests.fakes import FakeAcs, FakeModel, TrioMediaSocket, open_ws_pair, pcm_tone, record

NO_GREETING = AgentSettings(greeting=None)
LIMITS = CallLimits()


@dataclass
class Call:
    acs: FakeAcs
    model: FakeModel
    handle: CallHandle
    summary: CallSummary | None = None

    async def ended(self) -> CallSummary:
        await self.handle.finished.wait()
        await wait_all_tasks_blocked()
        assert self.summary is not None
        return self.summary


async def start_call(
    nursery: trio.Nursery,
    *,
    agent: AgentSettings = NO_GREETING,
    limits: CallLimits = LIMITS,
    model: FakeModel | None = None,
    call_id: str = "call-1",
    rate: int = 24000,
) -> Call:
    acs_client, acs_server = await open_ws_pair(nursery)
    call = Call(
        FakeAcs(acs_client, rate),
        model or FakeModel(nursery),
        CallHandle(CallIds(call_id, "corr-1")),
    )
    nursery.start_soon(record, acs_client, call.acs.seen)

    async def run() -> None:
        call.summary = await run_call(
            TrioMediaSocket(acs_server),
            call.model.connect,
            handle=call.handle,
            agent=agent,
            limits=limits,
        )

    nursery.start_soon(run)
    await call.model.connected.wait()
    await wait_all_tasks_blocked()
    return call


async def call_with_connector(
    nursery: trio.Nursery, connect_model: ModelConnector
) -> tuple[CallSummary, FakeAcs]:
    """Run a whole call against ``connect_model``; returns its summary and what ACS saw."""
    acs_client, acs_server = await open_ws_pair(nursery)
    acs = FakeAcs(acs_client)
    nursery.start_soon(record, acs_client, acs.seen)
    summary = await run_call(
        TrioMediaSocket(acs_server),
        connect_model,
        handle=CallHandle(CallIds("c")),
        agent=NO_GREETING,
        limits=LIMITS,
    )
    await wait_all_tasks_blocked()
    return summary, acs


async def test_two_turn_call(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    call = await start_call(nursery, agent=AgentSettings(greeting="Greet the caller."))
    acs, model = call.acs, call.model
    # The model is configured (GA session, PCM 24 kHz both ways, server VAD), then asked to greet
    # by a request item and a plain response.create: the session's persona stays in force.
    update, request, greeting = (m for _, m in model.seen.messages)
    session = update["session"]
    assert update["type"] == "session.update"
    assert session["instructions"] == AgentSettings().instructions
    assert session["model"] == "gpt-realtime-2.1"
    assert session["type"] == "realtime"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert request["type"] == "conversation.item.create"
    assert request["item"] == {
        "type": "message",
        "role": "system",
        "content": [{"type": "input_text", "text": "Greet the caller."}],
    }
    assert greeting == {"type": "response.create", "event_id": greeting["event_id"]}
    # Every client event carries its own event_id (an error can name its request).
    ids = [update["event_id"], request["event_id"], greeting["event_id"]]
    assert all(ids) and len(set(ids)) == 3

    t0 = trio.current_time()
    await acs.send_metadata()
    nursery.start_soon(acs.stream, 6000)  # the caller's line: 6 s of 20 ms frames
    await trio.sleep(0.25)
    await model.speak(1000)  # greeting, sent as a burst
    # Turn 1: caller speaks; the model answers 300 ms after the end of speech.
    await trio.sleep_until(t0 + 1.5)
    await model.speech_started()
    await trio.sleep_until(t0 + 2.0)
    await model.speech_stopped()
    await trio.sleep(0.3)
    await model.speak(800)
    # Turn 2: the answer took 400 ms.
    await trio.sleep_until(t0 + 3.5)
    await model.speech_started()
    await trio.sleep_until(t0 + 4.0)
    await model.speech_stopped()
    await trio.sleep(0.4)
    await model.speak(800)
    await trio.sleep_until(t0 + 6.0)
    await acs.ws.aclose(1000)  # the caller hangs up

    summary = await call.ended()
    assert summary.end_reason is EndReason.CALLER_HUNG_UP
    assert summary.ended_at == t0 + 6.0  # torn down at the instant of the hang-up
    assert model.seen.closed is not None and model.seen.closed.code == 1000
    assert summary.greeting_ttfa_ms == pytest.approx(250)
    assert summary.ttfa_ms == [pytest.approx(300), pytest.approx(400)]
    assert summary.turns == 2
    assert summary.barge_ins == 0  # the greeting had played out before the caller spoke
    # Every ms of agent audio reached ACS, in 20 ms frames of the documented shape.
    frames = acs.audio_out()
    assert len(frames) == summary.frames_out == (1000 + 800 + 800) // 20
    assert {len(pcm) for _, pcm in frames} == {960}
    assert {pcm for _, pcm in frames} == {pcm_tone(20, 2000)}
    # Paced: the greeting's frame k is written at max(0, 20k - 100) ms after it arrived.
    greeting_times = [t - (t0 + 0.25) for t, _ in frames[:50]]
    assert greeting_times == pytest.approx([max(0.0, 0.02 * k - 0.1) for k in range(50)], abs=1e-9)
    # Caller audio reached the model unchanged and in order, one 20 ms frame per append (the
    # default APPEND_BATCH_MS: no frame waits for a batch).
    appends = model.events("input_audio_buffer.append")
    assert {len(base64.b64decode(e["audio"])) for e in appends} == {960}
    assert model.appended_pcm() == pcm_tone(20, 1000) * len(appends)
    assert summary.frames_in == 300
    assert len(appends) == 300


async def test_barge_in_truncates_at_ms_played(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    acs, model = call.acs, call.model
    await acs.send_metadata()
    nursery.start_soon(acs.stream, 5000)
    t0 = trio.current_time()
    response_id, item_id = await model.start_response()
    for _ in range(20):  # 2 s of answer, as a burst
        await model.audio_delta(response_id, item_id, pcm_tone(100, 2000))
    # The caller talks over the agent 510 ms in: frames 0..30 have been written
    # (frame k leaves at max(0, 20k - 100) ms), i.e. 620 ms of the item were *sent*, but ACS
    # plays them back to back from t0, so the caller heard 510 ms; StopAudio flushes the rest.
    await trio.sleep_until(t0 + 0.51)
    await model.speech_started()
    # Deltas of the interrupted response still in flight must never reach the caller.
    await model.audio_delta(response_id, item_id, pcm_tone(100, 3000))
    await model.finish_response(response_id, item_id, status="cancelled")
    await wait_all_tasks_blocked()

    frames = acs.audio_out()
    stops = acs.stop_audio_times()
    assert len(frames) == 31
    assert stops == [t0 + 0.51]  # StopAudio left at once
    assert all(t <= stops[0] for t, _ in frames)
    (truncate,) = model.events("conversation.item.truncate")
    assert truncate == {
        "type": "conversation.item.truncate",
        "event_id": truncate["event_id"],
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": 510,  # the played position, exact under the mock clock
    }
    assert model.events("conversation.item.delete") == []
    # A new answer after the barge-in plays normally.
    await trio.sleep(0.2)
    await model.speak(200, value=4000)
    await trio.sleep(1)
    assert [pcm for _, pcm in acs.audio_out()[31:]] == [pcm_tone(20, 4000)] * 10
    call.handle.end(EndReason.CALL_DISCONNECTED)
    summary = await call.ended()
    assert summary.barge_ins == 1
    assert summary.truncated_at_ms == [510]
    assert summary.barge_in_latency_ms == [0.0]
    assert summary.frames_dropped_barge_in == 100 - 31


async def test_no_truncate_when_nothing_was_sent(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    model = call.model
    await model.start_response()  # a response that has produced no audio yet
    await model.speech_started()
    await wait_all_tasks_blocked()
    # An answer that has fully played out long ago is not interrupted either.
    await model.speak(200)
    await trio.sleep(5)
    await model.speech_started()
    await wait_all_tasks_blocked()
    assert model.events("conversation.item.truncate") == []
    assert call.acs.stop_audio_times() == []
    call.handle.end(EndReason.CALL_DISCONNECTED)
    assert (await call.ended()).barge_ins == 0


@pytest.mark.parametrize(
    ("reason", "media_code", "model_code"),
    [
        (EndReason.CALL_DISCONNECTED, 1000, 1000),
        (EndReason.SHUTDOWN, 1001, 1001),
    ],
)
async def test_control_plane_cancel_closes_both_sockets(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    reason: EndReason,
    media_code: int,
    model_code: int,
) -> None:
    call = await start_call(nursery)
    await trio.sleep(3)
    call.handle.end(reason, "from the test")
    summary = await call.ended()
    assert (summary.end_reason, summary.end_detail) == (reason, "from the test")
    assert summary.ended_at == summary.started_at + 3
    assert call.acs.seen.closed is not None and call.acs.seen.closed.code == media_code
    assert call.model.seen.closed is not None and call.model.seen.closed.code == model_code


async def test_cancel_before_start_is_applied_at_start(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    _, acs_server = await open_ws_pair(nursery)
    handle = CallHandle(CallIds("early"))
    handle.end(EndReason.CALL_DISCONNECTED, "CallDisconnected came first")
    summary = await run_call(
        TrioMediaSocket(acs_server),
        FakeModel(nursery).connect,
        handle=handle,
        agent=NO_GREETING,
        limits=LIMITS,
    )
    assert summary.end_reason is EndReason.CALL_DISCONNECTED
    assert summary.duration_s == 0


async def test_model_closing_ends_the_call(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    await trio.sleep(2)
    assert call.model.ws is not None
    # 1008 (policy violation): a new session would not fare better.  (1011 and friends are
    # retried: tests/call/test_model_session.py.)
    await call.model.ws.aclose(1008, "policy violation")
    summary = await call.ended()
    assert summary.end_reason is EndReason.MODEL_CLOSED
    assert "1008" in summary.end_detail
    assert len(call.model.connections) == 1
    assert summary.ended_at == summary.started_at + 2
    assert call.acs.seen.closed is not None and call.acs.seen.closed.code == 1000


async def test_fatal_model_error_ends_the_call_and_others_do_not(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    await call.model.send(
        {
            "type": "error",
            "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "x"},
        }
    )
    await trio.sleep(1)
    assert call.summary is None  # a non-fatal error: the call goes on
    await call.model.send(
        {
            "type": "error",
            "error": {
                "type": "insufficient_quota",
                "code": "insufficient_quota",
                "message": "You exceeded your current quota.",
            },
        }
    )
    summary = await call.ended()
    assert summary.end_reason is EndReason.MODEL_ERROR
    assert summary.model_errors == 2
    assert summary.ended_at == summary.started_at + 1


async def test_timeouts_end_the_call_on_time(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    limits = replace(LIMITS, max_duration_s=45, idle_timeout_s=30, media_timeout_s=20)
    # Media timeout: ACS sends nothing at all.
    silent_acs = await start_call(nursery, limits=limits, call_id="no-media")
    summary = await silent_acs.ended()
    assert (summary.end_reason, summary.duration_s) == (EndReason.MEDIA_TIMEOUT, 20)
    # Idle timeout: ACS streams silence, nobody speaks.
    idle = await start_call(nursery, limits=limits, call_id="idle")
    nursery.start_soon(partial(idle.acs.stream, 60_000, silent=True))
    summary = await idle.ended()
    assert (summary.end_reason, summary.duration_s) == (EndReason.IDLE_TIMEOUT, 30)
    # Max duration: a lively call still ends at 45 s.
    lively = await start_call(nursery, limits=limits, call_id="lively")
    nursery.start_soon(lively.acs.stream, 60_000)
    for _ in range(8):
        await lively.model.speech_started()
        await trio.sleep(6)
    summary = await lively.ended()
    assert (summary.end_reason, summary.duration_s) == (EndReason.MAX_DURATION, 45)
    for call in (silent_acs, idle, lively):
        assert call.acs.seen.closed is not None and call.acs.seen.closed.code == 1000
        assert call.model.seen.closed is not None and call.model.seen.closed.code == 1000


async def test_model_connect_failure_ends_the_call(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    from contextlib import asynccontextmanager

    from acs_trio.errors import ModelRejected

    @asynccontextmanager
    async def refused():  # type: ignore[no-untyped-def]
        await trio.sleep(0.2)
        raise ModelRejected("HTTP 401", status_code=401)
        yield

    summary, acs = await call_with_connector(nursery, refused)
    assert summary.end_reason is EndReason.MODEL_CONNECT_FAILED
    assert not summary.end_reason.caller_gone  # the control plane must hang up
    assert summary.duration_s == pytest.approx(0.2)
    assert acs.seen.closed is not None and acs.seen.closed.code == 1000


async def test_outer_cancellation_still_cleans_up(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    acs_client, acs_server = await open_ws_pair(nursery)
    acs, model = FakeAcs(acs_client), FakeModel(nursery)
    nursery.start_soon(record, acs_client, acs.seen)
    with trio.move_on_after(2):
        await run_call(
            TrioMediaSocket(acs_server),
            model.connect,
            handle=CallHandle(CallIds("c")),
            agent=NO_GREETING,
            limits=LIMITS,
        )
    await wait_all_tasks_blocked()
    assert acs.seen.closed is not None and acs.seen.closed.code == 1000
    assert model.seen.closed is not None
    assert "end_reason=cancelled" in caplog.text


async def test_a_bug_ends_only_its_call_with_1011(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    import acs_trio.call.playout as outbound

    call = await start_call(nursery)
    other = await start_call(nursery, call_id="other")
    # A bug in the outbound path, triggered only by this call's item.

    playout_send = outbound.Playout._write_frame

    async def failing_write(self: outbound.Playout, frame: outbound.OutboundFrame) -> None:
        if frame.item_id == "boom":
            raise RuntimeError("bug in the outbound path")
        await playout_send(self, frame)

    outbound.Playout._write_frame = failing_write  # type: ignore[method-assign]
    try:
        await call.model.start_response()
        await call.model.audio_delta("resp_x", "boom", pcm_tone(100))
        summary = await call.ended()
    finally:
        outbound.Playout._write_frame = playout_send  # type: ignore[method-assign]
    assert summary.end_reason is EndReason.INTERNAL_ERROR
    assert call.acs.seen.closed is not None and call.acs.seen.closed.code == 1011
    assert "bug in the outbound path" in caplog.text
    # The other call is untouched.
    assert other.summary is None
    await other.model.speak(100)
    await trio.sleep(1)
    assert len(other.acs.audio_out()) == 5
    other.handle.end(EndReason.CALL_DISCONNECTED)
    assert (await other.ended()).end_reason is EndReason.CALL_DISCONNECTED


async def test_two_calls_never_cross(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    one = await start_call(nursery, call_id="one")
    two = await start_call(nursery, call_id="two")
    for call in (one, two):
        await call.acs.send_metadata()
    nursery.start_soon(partial(one.acs.stream, 2000, value=111))
    nursery.start_soon(partial(two.acs.stream, 2000, value=222))
    await one.model.speak(500, value=1111)
    await two.model.speak(700, value=2222)
    await trio.sleep(3)
    assert set(one.model.appended_pcm()) == set(pcm_tone(1, 111))
    assert set(two.model.appended_pcm()) == set(pcm_tone(1, 222))
    assert {pcm for _, pcm in one.acs.audio_out()} == {pcm_tone(20, 1111)}
    assert {pcm for _, pcm in two.acs.audio_out()} == {pcm_tone(20, 2222)}
    assert (len(one.acs.audio_out()), len(two.acs.audio_out())) == (25, 35)
    await one.acs.ws.aclose()
    assert (await one.ended()).end_reason is EndReason.CALLER_HUNG_UP
    assert two.summary is None  # one call's hang-up leaves the other running
    await two.acs.ws.aclose()
    assert (await two.ended()).end_reason is EndReason.CALLER_HUNG_UP


async def test_sixteen_khz_call_is_resampled_both_ways(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery, rate=16000)
    await call.acs.send_metadata()
    await call.acs.stream(600)
    await wait_all_tasks_blocked()
    appends = call.model.events("input_audio_buffer.append")
    # 30 frames of 640 bytes at 16 kHz became 600 ms at 24 kHz (minus the filter's startup).
    assert len(call.model.appended_pcm()) == 600 * 48
    assert len(appends) == 30  # one per frame (APPEND_BATCH_MS=20)
    await call.model.speak(1000)
    await trio.sleep(2)
    frames = call.acs.audio_out()
    assert {len(pcm) for _, pcm in frames[:-1]} == {640}
    assert sum(len(pcm) for _, pcm in frames) == pytest.approx(1000 * 32, abs=8)
    call.handle.end(EndReason.CALL_DISCONNECTED)
    assert (await call.ended()).sample_rate_hz == 16000


async def test_larger_outbound_frames_keep_pacing_and_truncate_exact(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery, limits=replace(LIMITS, frame_ms=60))
    t0 = trio.current_time()
    response_id, item_id = await call.model.start_response()
    for _ in range(10):
        await call.model.audio_delta(response_id, item_id, pcm_tone(100, 2000))
    # 60 ms frames leave at max(0, 60k - 100) ms: frames 0..8 by 0.43 s = 540 ms of the item
    # sent, of which 430 ms were played.
    await trio.sleep_until(t0 + 0.43)
    await call.model.speech_started()
    await wait_all_tasks_blocked()
    assert [len(pcm) for _, pcm in call.acs.audio_out()] == [2880] * 9
    assert call.model.events("conversation.item.truncate")[0]["audio_end_ms"] == 430
    call.handle.end(EndReason.CALL_DISCONNECTED)
    await call.ended()
