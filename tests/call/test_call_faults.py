"""Hostile input from either peer, and a slow model: the call survives or ends alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from acs_trio.call.bridge import run_call
from acs_trio.call.lifecycle import CallHandle, CallIds, EndReason
from acs_trio.call.model_socket import ModelSocket
from acs_trio.config import CallLimits
from tests.call.test_call import LIMITS, NO_GREETING, call_with_connector, start_call
from tests.fakes import FakeAcs, FakeModel, TrioMediaSocket, open_ws_pair, pcm_tone, record

GARBAGE_FROM_ACS = [
    "{not json",
    "[1, 2, 3]",
    '{"no": "kind"}',
    '{"kind": "AudioData", "audioData": {"data": "%%%not-base64%%%", "silent": false}}',
    '{"kind": "AudioData", "audioData": {"data": "AA==", "silent": false}}',  # odd byte count
    '{"kind": "AudioData"}',
    '{"kind": "AudioMetadata", "audioMetadata": {"sampleRate": "fast"}}',
    b"\x00\x01binary",
    '{"kind": "AudioData", "audioData": {"data": "' + "A" * 70_000 + '"}}',  # oversized
]


async def test_garbage_from_acs_is_logged_and_the_call_goes_on(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    call = await start_call(nursery)
    other = await start_call(nursery, call_id="bystander")
    await call.acs.send_metadata()
    for message in GARBAGE_FROM_ACS:
        await call.acs.ws.send_message(message)
    await call.acs.send_json({"kind": "MarkData", "markData": {"id": "x"}})
    await call.acs.send_json({"kind": "MarkData", "markData": {"id": "y"}})
    await call.acs.send_json({"kind": "DtmfData", "dtmfData": {"data": "5"}})
    await call.acs.stream(120)
    await wait_all_tasks_blocked()
    # Good audio after the garbage still flows; the garbage never reached the model.
    assert call.model.appended_pcm() == pcm_tone(120, 1000)
    call.handle.end(EndReason.CALL_DISCONNECTED)
    summary = await call.ended()
    assert summary.bad_acs_messages == len(GARBAGE_FROM_ACS)
    assert summary.unknown_kinds == {"MarkData": 2}
    assert caplog.text.count("unknown kind 'MarkData'") == 1  # logged once per call
    assert "ignoring bad media message #1 from ACS" in caplog.text
    assert other.summary is None


async def test_a_flood_of_garbage_ends_only_that_call(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    limits = replace(LIMITS, max_bad_messages=10)
    call = await start_call(nursery, limits=limits)
    other = await start_call(nursery, call_id="bystander")
    for _ in range(11):
        await call.acs.ws.send_message("{garbage")
    summary = await call.ended()
    assert summary.end_reason is EndReason.ACS_PROTOCOL_ERROR
    assert call.acs.seen.closed is not None and call.acs.seen.closed.code == 1007
    assert other.summary is None


@pytest.mark.parametrize(
    "metadata",
    [
        {"encoding": "OPUS", "sampleRate": 24000, "channels": 1},
        {"encoding": "PCM", "sampleRate": 8000, "channels": 1},
        {"encoding": "PCM", "sampleRate": 24000, "channels": 2},
    ],
)
async def test_wrong_audio_format_ends_the_call_with_a_reason(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    metadata: dict[str, object],
) -> None:
    call = await start_call(nursery)
    await call.acs.send_json({"kind": "AudioMetadata", "audioMetadata": metadata})
    summary = await call.ended()
    assert summary.end_reason is EndReason.ACS_PROTOCOL_ERROR
    assert "unsupported audio format" in caplog.text
    assert not summary.end_reason.caller_gone  # the control plane hangs up


async def test_garbage_from_the_model_is_logged_and_the_call_goes_on(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    model = call.model
    response_id, item_id = await model.start_response()
    await model.send("{not json")
    await model.send(b"\x00binary")
    await model.send({"no_type": 1})
    await model.send({"type": "response.output_audio.delta", "response_id": response_id})
    await model.send(
        {
            "type": "response.output_audio.delta",
            "response_id": response_id,
            "item_id": item_id,
            "delta": "%%",
        }
    )
    await model.send({"type": "some.future.event", "payload": [1, 2]})
    await model.audio_delta(response_id, item_id, pcm_tone(100, 2000))
    # Beta event names are understood too.
    await model.send(
        {
            "type": "response.audio.delta",
            "response_id": response_id,
            "item_id": item_id,
            "delta": __import__("base64").b64encode(pcm_tone(40, 2000)).decode(),
        }
    )
    await trio.sleep(1)
    assert len(call.acs.audio_out()) == 7
    call.handle.end(EndReason.CALL_DISCONNECTED)
    summary = await call.ended()
    assert summary.bad_model_messages == 5
    assert summary.end_reason is EndReason.CALL_DISCONNECTED


async def test_an_oversized_model_message_ends_the_call_alone(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    limits = replace(LIMITS, max_model_message_bytes=64 * 1024)
    model = FakeModel(nursery, max_message_size=64 * 1024)
    call = await start_call(nursery, limits=limits, model=model)
    other = await start_call(nursery, call_id="bystander")
    response_id, item_id = await model.start_response()
    await model.audio_delta(response_id, item_id, pcm_tone(1500))  # 96 KB of base64
    summary = await call.ended()
    assert summary.end_reason is EndReason.MODEL_CLOSED
    assert "1009" in summary.end_detail  # message too big
    assert call.acs.seen.closed is not None and call.acs.seen.closed.code == 1000
    assert other.summary is None


async def test_slow_model_applies_backpressure_and_loses_nothing(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    limits: CallLimits = replace(LIMITS, model_outbox_size=4)
    model = FakeModel(nursery, lockstep=True)
    call = await start_call(nursery, limits=limits, model=model)
    await call.acs.send_metadata()
    model.stop_reading()
    nursery.start_soon(partial(call.acs.stream, 3000))
    await trio.sleep(1.5)
    # The model reads nothing: ACS receive waits once the outbox is full (policy: wait, count).
    assert call.summary is None
    await trio.sleep(1.6)
    model.resume_reading()
    await trio.sleep(2)
    await wait_all_tasks_blocked()
    assert model.appended_pcm() == pcm_tone(3000, 1000)  # every frame, in order
    call.handle.end(EndReason.CALL_DISCONNECTED)
    summary = await call.ended()
    assert summary.inbound_waits >= 1
    assert summary.frames_in == 150
    # Stalled well past the media timeout?  No: a wait on our side is not a dead line.
    assert summary.end_reason is EndReason.CALL_DISCONNECTED


@pytest.mark.parametrize("connect_s", [0.03, 0.2, 0.5, 1.3])
async def test_appends_queued_while_the_model_connects_stay_in_order(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, connect_s: float
) -> None:
    """Appends wait in the outbox while the model connects; once it is up, the ACS receive task
    writes new appends itself (send_from_receiver).  Across that switch nothing is reordered or
    lost: each frame carries its own value, and the model must see them all, in order."""
    model = FakeModel(nursery, lockstep=True)  # each write waits for the model to read it

    @asynccontextmanager
    async def slow_connect() -> AsyncIterator[ModelSocket]:
        await trio.sleep(connect_s)
        async with model.connect() as ws:
            yield ws

    acs_client, acs_server = await open_ws_pair(nursery)
    acs = FakeAcs(acs_client)
    nursery.start_soon(record, acs_client, acs.seen)
    handle = CallHandle(CallIds("order"))
    limits = replace(LIMITS, append_batch_ms=20)  # one append per frame: the most hand-offs
    run = partial(run_call, handle=handle, agent=NO_GREETING, limits=limits)
    nursery.start_soon(run, TrioMediaSocket(acs_server), slow_connect)
    await acs.send_metadata()
    frames = [pcm_tone(20, n + 1) for n in range(150)]
    start = trio.current_time()
    for n, frame in enumerate(frames):
        # Bursts of 10 frames (a jittery network): the receive task stays busy while the
        # model sender drains the outbox, so the two interleave.
        await trio.sleep_until(start + n // 10 * 0.2)
        await acs.send_frame(frame)
    await trio.sleep(0.2)
    await wait_all_tasks_blocked()
    assert model.appended_pcm() == b"".join(frames)
    handle.end(EndReason.CALL_DISCONNECTED)
    await handle.finished.wait()


# --- regressions: hang-up races seen under load by the benchmark ------------------------------


@pytest.mark.parametrize("frame", range(5, 10))
async def test_hang_up_while_agent_audio_is_being_sent_is_not_a_crash(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    frame: int,
) -> None:
    call = await start_call(nursery)
    t0 = trio.current_time()
    await call.model.speak(1000)
    # Close exactly when paced frame `frame` is due (20k - 100 ms), racing the sender.
    await trio.sleep_until(t0 + 0.02 * frame - 0.1)
    await call.acs.ws.aclose(1000)
    summary = await call.ended()
    assert summary.end_reason is EndReason.CALLER_HUNG_UP
    assert "crashed" not in caplog.text


async def test_a_closed_socket_ends_playout_quietly(autojump_clock: trio.testing.MockClock) -> None:
    from acs_trio.call.lifecycle import CallIds, CallSummary
    from acs_trio.call.playout import OutboundFrame, Playout
    from acs_trio.errors import MediaClosed

    class HungUp:
        async def receive(self) -> str:
            raise MediaClosed(code=1000)

        async def send(self, message: str) -> None:
            raise MediaClosed(code=1000)

        async def close(self, code: int, reason: str) -> None:
            pass

    send, receive = trio.open_memory_channel[OutboundFrame](4)
    playout = Playout(HungUp(), receive, CallSummary(CallIds("c"), 0.0), lead_ms=100)
    send.send_nowait(OutboundFrame(1, "item", b"\x00" * 960, 20.0))
    await playout.run()
    assert playout.media_closed


async def test_audio_after_the_other_side_stopped_is_not_a_crash(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    from acs_trio.call.bridge import _CallBridge
    from acs_trio.call.lifecycle import CallHandle, CallIds
    from acs_trio.call.playout import OutboundFrame
    from acs_trio.config import AgentSettings
    from acs_trio.wire.acs_media import AudioData
    from tests.fakes import TrioMediaSocket, open_ws_pair

    _, server = await open_ws_pair(nursery)
    bridge = _CallBridge(TrioMediaSocket(server), CallHandle(CallIds("c")), AgentSettings(), LIMITS)
    bridge.outbox_recv.close()  # send_to_model has exited
    for _ in range(3):
        await bridge.on_caller_audio(AudioData("", None, b"\x00" * 960, False))
    bridge.playout._frames.close()  # Playout.run has exited
    await bridge.push_frames([OutboundFrame(1, "item", b"\x00" * 960, 20.0)])


async def test_caller_speech_as_the_playout_ends_is_no_barge_in_and_no_crash(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """speech_started racing the call's end: Playout.run has closed its channel already."""
    from acs_trio.call.bridge import _CallBridge
    from acs_trio.call.lifecycle import CallHandle, CallIds
    from acs_trio.call.playout import OutboundFrame
    from acs_trio.config import AgentSettings
    from tests.fakes import TrioMediaSocket, open_ws_pair

    _, server = await open_ws_pair(nursery)
    bridge = _CallBridge(TrioMediaSocket(server), CallHandle(CallIds("c")), AgentSettings(), LIMITS)
    await bridge.push_frames([OutboundFrame(1, "item", b"\x00" * 960, 20.0)])
    bridge.playout._frames.close()  # Playout.run has exited (the call is ending)
    assert bridge.playout.interrupt() is None  # was: trio.ClosedResourceError
    await bridge.keypad_barge_in()  # a key at that moment: nothing to cut either
    assert bridge.summary.barge_ins == 0


async def test_an_unexpected_error_while_connecting_is_a_crash_of_this_call_only(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def broken():  # type: ignore[no-untyped-def]
        await trio.lowlevel.checkpoint()
        raise RuntimeError("bug in a connector")
        yield

    summary, acs = await call_with_connector(nursery, broken)
    assert summary.end_reason is EndReason.INTERNAL_ERROR
    assert acs.seen.closed is not None
    assert acs.seen.closed.code == 1011
    assert "bug in a connector" in caplog.text


async def test_a_peer_inventing_kinds_cannot_grow_the_summary(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    call = await start_call(nursery)
    for n in range(100):
        await call.acs.send_json({"kind": f"Kind{n}", f"kind{n}": {}})
    await wait_all_tasks_blocked()
    call.handle.end(EndReason.CALL_DISCONNECTED)
    summary = await call.ended()
    assert len(summary.unknown_kinds) == 33
    assert summary.unknown_kinds["(other)"] == 68


async def test_appends_stay_in_order_when_tool_messages_share_the_outbox(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A tool's output and its response.create go through the model outbox too.  A slow model
    link is writing the second when two caller appends arrive: the first waits in the outbox,
    and the second must not overtake it by the direct way (send_from_receiver)."""
    from acs_trio.call.bridge import _CallBridge
    from acs_trio.wire import realtime as rt
    from acs_trio.wire.acs_media import AudioData

    class SlowModelLink:
        """Each write takes 50 ms; writers queue in call order (trio-websocket's FIFO lock)."""

        def __init__(self) -> None:
            self.lock = trio.StrictFIFOLock()
            self.written: list[str] = []

        async def send(self, message: str) -> None:
            async with self.lock:
                await trio.sleep(0.05)
                self.written.append(message)

    _, server = await open_ws_pair(nursery)
    limits = replace(LIMITS, append_batch_ms=20)  # one append per 20 ms frame
    bridge = _CallBridge(TrioMediaSocket(server), CallHandle(CallIds("c")), NO_GREETING, limits)
    link = SlowModelLink()
    bridge.model_live = True
    nursery.start_soon(bridge.send_to_model, link)
    t0 = trio.current_time()
    tools = bridge.outbox_send.clone()  # as the tool runner holds it
    tools.send_nowait(rt.response_create())
    tools.send_nowait(rt.response_create())
    first, second = pcm_tone(20, 1), pcm_tone(20, 2)
    await trio.sleep_until(t0 + 0.06)  # the link is writing the second tool message
    await bridge.on_caller_audio(AudioData("", None, first, False))
    await trio.sleep_until(t0 + 0.08)
    await bridge.on_caller_audio(AudioData("", None, second, False))
    await trio.sleep(0.5)
    appends = [m for m in link.written if "input_audio_buffer.append" in m]
    assert appends == [rt.input_audio_append(first), rt.input_audio_append(second)]
