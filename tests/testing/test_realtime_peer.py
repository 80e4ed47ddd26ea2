"""The local realtime peer, over in-memory WebSocket pairs: one story per test, virtual time.

Each test plays the client side of a Realtime GA session (docs/protocols/realtime.md) against
``handle_connection`` and checks the wire: event order, exact VAD times on the audio timeline,
audio lengths, errors.  One test goes over real TCP through ``serve_local_peer``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    open_websocket_url,
    wrap_client_stream,
    wrap_server_stream,
)

from acs_trio.testing.realtime import (
    LocalPeerSettings,
    PeerStats,
    handle_connection,
    serve_local_peer,
)
from acs_trio.testing.realtime.assets import load_pcm
from acs_trio.testing.realtime.server import main

RATE = 24_000


def tone(ms: int, *, hz: float = 440.0, dbfs: float = -20.0) -> bytes:
    """A sine burst at ``dbfs`` RMS, PCM16LE 24 kHz."""
    n = RATE * ms // 1000
    amplitude = 32768 * 10 ** (dbfs / 20) * np.sqrt(2)
    samples = amplitude * np.sin(2 * np.pi * hz * np.arange(n) / RATE)
    return samples.astype("<i2").tobytes()


def silence(ms: int) -> bytes:
    return b"\x00\x00" * (RATE * ms // 1000)


class PeerClient:
    """The client end of one local-peer connection; a reader task files every event it gets."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        #: ``(trio time, event)`` for every event received so far.
        self.log: list[tuple[float, dict[str, Any]]] = []
        self._send, self._recv = trio.open_memory_channel[dict[str, Any]](10_000)

    async def read_forever(self) -> None:
        with self._send:
            async for message in _messages(self.ws):
                event = json.loads(message)
                self.log.append((trio.current_time(), event))
                await self._send.send(event)

    async def send(self, kind: str, **fields: Any) -> None:
        await self.ws.send_message(json.dumps({"type": kind, **fields}))

    async def send_audio(self, pcm: bytes, *, frame_ms: int = 20, paced: bool = False) -> None:
        """Append ``pcm`` in frames, like the bridge; ``paced`` sleeps one frame per frame."""
        step = RATE * frame_ms // 1000 * 2
        for offset in range(0, len(pcm), step):
            await self.send("input_audio_buffer.append", audio=b64(pcm[offset : offset + step]))
            if paced:
                await trio.sleep(frame_ms / 1000)

    async def next(self) -> dict[str, Any]:
        return await self._recv.receive()

    async def until(self, kind: str) -> list[dict[str, Any]]:
        """Every event up to and including the next one of type ``kind``."""
        seen = [await self.next()]
        while seen[-1]["type"] != kind:
            seen.append(await self.next())
        return seen


async def _messages(ws: WebSocketConnection) -> AsyncIterator[str | bytes]:
    while True:
        try:
            yield await ws.get_message()
        except ConnectionClosed:
            return


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def types(events: list[dict[str, Any]]) -> list[str]:
    """Event types with runs of audio/transcript deltas collapsed to one entry each."""
    out: list[str] = []
    for event in events:
        kind = event["type"]
        if kind.endswith(".delta") and out and out[-1] == kind:
            continue
        out.append(kind)
    return out


def audio_of(events: list[dict[str, Any]]) -> bytes:
    return b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )


@asynccontextmanager
async def open_peer(
    settings: LocalPeerSettings | None = None,
) -> AsyncIterator[tuple[PeerClient, PeerStats]]:
    """A local peer on an in-memory stream pair (aesthetics.md §3); closes the client on exit."""
    stats = PeerStats()
    async with trio.open_nursery() as nursery:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        done = trio.Event()

        async def server_side() -> None:
            request = await wrap_server_stream(nursery, server_stream)
            await handle_connection(await request.accept(), settings, stats=stats)
            done.set()

        nursery.start_soon(server_side)
        ws = await wrap_client_stream(nursery, client_stream, "peer.test", "/v1/realtime")
        client = PeerClient(ws)
        nursery.start_soon(client.read_forever)
        yield client, stats
        await ws.aclose()
        with trio.fail_after(5):
            await done.wait()


GREETING = load_pcm("greeting.wav")
VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}
PCM = {"type": "audio/pcm", "rate": 24000}


def session_update(**audio_input: Any) -> dict[str, Any]:
    return {"type": "realtime", "audio": {"input": {"format": PCM, **audio_input}}}


async def test_session_created_then_update_merges(autojump_clock: trio.abc.Clock) -> None:
    async with open_peer() as (client, _):
        created = await client.next()
        assert created["type"] == "session.created"
        session = created["session"]
        assert session["type"] == "realtime"
        assert session["audio"]["input"]["format"] == PCM
        assert session["audio"]["output"]["format"] == PCM
        assert session["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500

        await client.send(
            "session.update",
            event_id="evt_1",
            session={
                "type": "realtime",
                "instructions": "be brief",
                "audio": {
                    "input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 200}},
                    "output": {"format": PCM, "voice": "cedar"},
                },
            },
        )
        updated = (await client.next())["session"]
        assert updated["instructions"] == "be brief"
        assert updated["audio"]["output"]["voice"] == "cedar"
        turn_detection = updated["audio"]["input"]["turn_detection"]
        assert turn_detection["silence_duration_ms"] == 200
        assert turn_detection["prefix_padding_ms"] == 300  # default kept
        assert updated["id"] == session["id"]


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"instructions": "no type"}, "session.type"),
        ({"type": "realtime", "modalities": ["audio"]}, "session.modalities"),  # a beta name
        ({"type": "realtime", "audio": {"input": {"voice": "marin"}}}, "session.audio.input.voice"),
        ({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}},
         "session.audio.input.format.type"),
        ({"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcm"}}}},
         "session.audio.output.format.rate"),
        ({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad",
                                                                      "threshold": 2}}}},
         "session.audio.input.turn_detection.threshold"),
    ],
)  # fmt: skip
async def test_session_update_violations_are_errors_and_keep_the_socket(
    autojump_clock: trio.abc.Clock, session: dict[str, Any], param: str
) -> None:
    async with open_peer() as (client, stats):
        await client.next()
        await client.send("session.update", event_id="evt_bad", session=session)
        error = await client.next()
        assert error["type"] == "error"
        assert error["error"]["type"] == "invalid_request_error"
        assert error["error"]["param"] == param
        assert error["error"]["event_id"] == "evt_bad"
        await client.send("session.update", session={"type": "realtime"})
        assert (await client.next())["type"] == "session.updated"
    assert len(stats.errors) == 1


async def test_greeting_response_full_sequence_faster_than_real_time(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_peer() as (client, stats):
        await client.next()
        await client.send("response.create", response={"instructions": "Greet the caller."})
        events = await client.until("rate_limits.updated")

    assert types(events) == [
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
        "rate_limits.updated",
    ]
    deltas = [e for e in events if e["type"] == "response.output_audio.delta"]
    assert audio_of(events) == GREETING  # 57,001 samples: 23 chunks of 100 ms and one of 75 ms
    assert [len(base64.b64decode(d["delta"])) for d in deltas] == [4800] * 23 + [3602]
    created, item_added = events[0]["response"], events[1]["item"]
    assert item_added["id"].startswith("item_")
    assert item_added["role"] == "assistant"
    assert item_added["object"] == "realtime.item"
    assert {(d["response_id"], d["item_id"]) for d in deltas} == {(created["id"], item_added["id"])}
    transcript = "".join(
        e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta"
    )
    assert transcript == "Hi, test agent here. How can I help?"
    done = events[-2]["response"]
    assert (done["status"], done["status_details"]) == ("completed", None)
    assert done["output"][0]["content"] == [{"type": "output_audio", "transcript": transcript}]
    assert done["usage"]["output_token_details"]["audio_tokens"] == 48  # 2375 ms / 50 ms
    # 0.15 s before the first delta, then one 100 ms chunk every 20 ms: five times real time.
    times = [t for t, e in client.log if e["type"] == "response.output_audio.delta"]
    assert times[0] == pytest.approx(0.15)
    assert times[-1] - times[0] == pytest.approx(23 * 0.02)
    assert (stats.responses, stats.responses_completed) == (["greeting"], 1)
    assert stats.events_received["response.create"] == 1


async def test_vad_turn_exact_times_then_echo(autojump_clock: trio.abc.Clock) -> None:
    async with open_peer() as (client, stats):
        await client.next()
        await client.send("session.update", session=session_update(turn_detection=VAD))
        await client.next()
        await client.send_audio(silence(1000) + tone(1000) + silence(1000))
        started = await client.next()
        stopped = await client.next()
        user_side = await client.until("conversation.item.done")
        response = await client.until("rate_limits.updated")

    assert started["type"] == "input_audio_buffer.speech_started"
    assert started["audio_start_ms"] == 700  # tone at 1000 ms minus 300 ms prefix padding
    assert stopped == {**stopped, "type": "input_audio_buffer.speech_stopped", "audio_end_ms": 2500}
    item_id = started["item_id"]
    assert stopped["item_id"] == item_id
    assert types(user_side) == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    assert (user_side[0]["item_id"], user_side[0]["previous_item_id"]) == (item_id, None)
    item = user_side[2]["item"]
    assert (item["id"], item["object"]) == (item_id, "realtime.item")
    assert (item["role"], item["type"], item["content"][0]["type"]) == (
        "user",
        "message",
        "input_audio",
    )
    # The echo: the voiced part of the turn, prefix padding included (700 ms .. 2000 ms).
    assert response[0]["type"] == "response.created"
    assert audio_of(response) == (silence(1000) + tone(1000))[700 * 48 : 2000 * 48]
    assert response[-2]["response"]["output"][0]["content"][0]["transcript"] == (
        "(echo of your 1.3 s of speech)"
    )
    assert stats.turns == [(700, 2500)]
    assert stats.responses == ["echo"]


async def test_caller_asset_is_two_turns_each_echoed(autojump_clock: trio.abc.Clock) -> None:
    async with open_peer() as (client, stats):
        await client.next()
        await client.send("session.update", session=session_update(turn_detection=VAD))
        await client.next()
        await client.send_audio(load_pcm("caller.wav"), paced=True)
        await client.until("rate_limits.updated")
        await client.until("rate_limits.updated")
    assert stats.responses == ["echo", "echo"]
    assert stats.cancels == []
    # 0.3 s of silence, then speech whose first 30 ms is below -40 dBFS: 330 ms - 300 ms of prefix.
    # Each turn ends 500 ms after its last voiced 10 ms frame; the file ends 200 ms later.
    assert stats.turns == [(30, 2540), (3230, 5820)]


async def test_barge_in_cancels_the_greeting_mid_way(autojump_clock: trio.abc.Clock) -> None:
    async with open_peer() as (client, stats):
        await client.next()
        await client.send("session.update", session=session_update(turn_detection=VAD))
        await client.next()
        await client.send("response.create")
        await client.send_audio(silence(300) + tone(600) + silence(600), paced=True)
        greeting_events = await client.until("input_audio_buffer.speech_started")
        cancel_events = await client.until("rate_limits.updated")
        echo_events = await client.until("rate_limits.updated")
        greeting_id = greeting_events[1]["item"]["id"]
        heard_ms = len(audio_of(greeting_events)) // 48

        await client.send("conversation.item.truncate", item_id=greeting_id, content_index=0,
                          audio_end_ms=heard_ms - 100)  # fmt: skip
        truncated = await client.next()
        await client.send("conversation.item.truncate", event_id="evt_long", item_id=greeting_id,
                          content_index=0, audio_end_ms=heard_ms + 1000)  # fmt: skip
        too_long = await client.next()
        await client.send("conversation.item.truncate", item_id="item_nope", content_index=0,
                          audio_end_ms=10)  # fmt: skip
        unknown = await client.next()

    started = greeting_events[-1]
    assert started["audio_start_ms"] == 0  # tone at 300 ms minus 300 ms of prefix padding
    assert 0 < heard_ms < len(GREETING) // 48
    assert types(cancel_events) == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
        "rate_limits.updated",
    ]  # no delta after the barge-in
    done = cancel_events[4]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert done["output"][0]["status"] == "incomplete"
    times = {id(e): t for t, e in client.log}
    assert times[id(cancel_events[4])] == times[id(started)]
    # The caller's turn still ends and is echoed: 0 .. 900 ms of their audio.
    assert echo_events[-2]["response"]["status"] == "completed"
    assert len(audio_of(echo_events)) == 900 * 48

    assert truncated == {**truncated, "type": "conversation.item.truncated", "item_id": greeting_id,
                         "content_index": 0, "audio_end_ms": heard_ms - 100}  # fmt: skip
    assert too_long["error"]["message"] == (
        f"Audio content of {heard_ms}ms is already shorter than {heard_ms + 1000}ms"
    )
    assert too_long["error"]["event_id"] == "evt_long"
    assert unknown["error"]["code"] == "item_truncate_invalid_item_id"
    assert stats.cancels == ["turn_detected"]
    assert stats.truncations == [(greeting_id, heard_ms - 100)]


async def test_response_cancel_when_active_and_when_not(autojump_clock: trio.abc.Clock) -> None:
    async with open_peer() as (client, stats):
        await client.next()
        await client.send("response.create")
        await client.until("response.output_audio.delta")
        await client.send("response.create", event_id="evt_twice")
        busy = await client.until("error")
        await client.send("response.cancel", event_id="evt_cancel")
        closing = await client.until("rate_limits.updated")
        await client.send("response.cancel", event_id="evt_again")
        not_active = await client.until("error")

    assert busy[-1]["error"]["code"] == "conversation_already_has_active_response"
    done = closing[-2]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert not_active == [not_active[-1]]  # nothing streamed after the cancel
    assert not_active[0]["error"]["code"] == "response_cancel_not_active"
    assert not_active[0]["error"]["event_id"] == "evt_again"
    assert stats.cancels == ["client_cancelled"]


async def test_bad_frames_are_error_events_and_the_socket_stays_open(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_peer() as (client, stats):
        await client.next()
        await client.send("input_audio_buffer.append", event_id="evt_a", audio="not base64!")
        invalid_audio = (await client.next())["error"]
        await client.ws.send_message("{not json")
        malformed = (await client.next())["error"]
        await client.send("output_audio_buffer.clear", event_id="evt_u")
        unknown = (await client.next())["error"]
        await client.ws.send_message(b"\x00\x01")
        binary = (await client.next())["error"]
        await client.send("input_audio_buffer.clear")
        cleared = await client.next()

    assert invalid_audio == {
        "type": "invalid_request_error",
        "code": "invalid_value",
        "message": "Invalid 'audio'. Expected base64-encoded audio bytes (mono PCM16 at 24kHz) "
        "but got an invalid value.",
        "param": "audio.audio",
        "event_id": "evt_a",
    }
    assert (malformed["type"], malformed["code"]) == ("invalid_request_error", "invalid_json")
    assert (unknown["code"], unknown["param"], unknown["event_id"]) == (
        "invalid_value", "type", "evt_u",
    )  # fmt: skip
    assert unknown["message"].startswith('Invalid value: "output_audio_buffer.clear".')
    assert binary["type"] == "invalid_request_error"
    assert cleared["type"] == "input_audio_buffer.cleared"
    assert stats.errors == ["invalid_value", "invalid_json", "invalid_value", "invalid_value"]


async def test_push_to_talk_commit_then_response(autojump_clock: trio.abc.Clock) -> None:
    async with open_peer() as (client, stats):
        await client.next()
        await client.send("session.update", session=session_update(turn_detection=None))
        assert (await client.next())["session"]["audio"]["input"]["turn_detection"] is None
        await client.send_audio(tone(60))
        await client.send("input_audio_buffer.commit", event_id="evt_c")
        too_small = (await client.next())["error"]
        await client.send_audio(tone(500))
        await client.send("input_audio_buffer.commit")
        committed = await client.until("conversation.item.done")
        await client.send("response.create")
        response = await client.until("rate_limits.updated")
        # A user item carries no model audio, so it cannot be truncated.
        await client.send("conversation.item.truncate", item_id=committed[0]["item_id"],
                          content_index=0, audio_end_ms=0)  # fmt: skip
        wrong_kind = (await client.next())["error"]

    assert too_small["code"] == "input_audio_buffer_commit_empty"
    assert too_small["message"].endswith("but buffer only has 60.00ms of audio.")
    assert types(committed) == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]  # fmt: skip; and no speech events, no response: VAD is off
    assert len(audio_of(response)) == 560 * 48
    assert response[-2]["response"]["output"][0]["content"][0]["transcript"] == (
        "(echo of your 0.6 s of speech)"
    )
    assert wrong_kind["code"] == "unsupported_content_type"
    assert (stats.turns, stats.responses) == ([], ["echo"])


async def test_serve_local_peer_over_tcp_accepts_query_and_auth() -> None:
    record: list[PeerStats] = []
    settings = LocalPeerSettings(pace_factor=None, first_delta_delay_s=0.0)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve_local_peer, settings=settings, record=record))
            assert url.startswith("ws://127.0.0.1:")
            assert url.endswith("/v1/realtime")
            async with open_websocket_url(
                url + "?model=gpt-realtime", extra_headers=[("Authorization", "Bearer sk-x")]
            ) as ws:
                client = PeerClient(ws)
                nursery.start_soon(client.read_forever)
                assert (await client.next())["type"] == "session.created"
                await client.send("response.create")
                events = await client.until("rate_limits.updated")
            # A raw handshake: trio-websocket's client leaks its socket when it is rejected.
            status_line = await _raw_handshake(server_port=int(url.split(":")[2].split("/")[0]))
            nursery.cancel_scope.cancel()
    assert audio_of(events) == GREETING
    assert status_line.startswith(b"HTTP/1.1 404")
    assert [stats.responses_completed for stats in record] == [1]


async def _raw_handshake(server_port: int) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", server_port)
    async with stream:
        await stream.send_all(
            b"GET /v1/other HTTP/1.1\r\nHost: peer.test\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        return (await stream.receive_some(4096)).split(b"\r\n", 1)[0]


def test_cli_rejects_bad_knobs() -> None:
    assert main(["--chunk-ms", "0"]) == 2
