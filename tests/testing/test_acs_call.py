"""Whole simulated calls against a tiny in-test server that follows the documented protocol.

The fake server answers with the real SDK (over the server's httpx transport), checks the ACS
JWTs on callbacks and on the media socket, greets, answers each caller turn with paced audio in
the documented §4.4 shape, and honours barge-in with StopAudio.  Real sockets and the real clock:
the simulator streams in real time, so the WAV and answers are kept short.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import jwt
import numpy as np
import pytest
import trio
from azure.communication.callautomation.aio import CallAutomationClient
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import request, websocket
from quart_trio import QuartTrio

from acs_trio.control.acs_rest import HttpxTransport, media_streaming_options
from acs_trio.testing.acs import CallOptions, SimulatedAcs, open_simulated_acs
from acs_trio.testing.acs.audio import write_wav

RATE = 24000
FAST = CallOptions(lead_in_s=0.1, quiet_s=0.3, barge_in_delay_s=0.1, answer_timeout_s=5,
                   greeting_timeout_s=5, response_timeout_s=5, playout_timeout_s=5)  # fmt: skip


def tone(seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (5000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


@pytest.fixture
def caller_wav(tmp_path: Path) -> Path:
    """Two 0.3 s utterances, 0.6 s apart."""
    gap = np.zeros(round(0.6 * RATE), dtype=np.int16)
    path = tmp_path / "caller.wav"
    write_wav(path, RATE, np.concatenate([tone(0.3), gap, tone(0.3), gap[: RATE // 10]]))
    return path


def audio_data(pcm: bytes) -> str:
    """docs/protocols/acs.md §4.4, the documented Python shape."""
    return json.dumps(
        {
            "Kind": "AudioData",
            "AudioData": {"Data": base64.b64encode(pcm).decode()},
            "StopAudio": None,
        }
    )


STOP_AUDIO = json.dumps({"Kind": "StopAudio", "AudioData": None, "StopAudio": {}})


@dataclass
class FakeServer:
    """What the fake server saw; ``hang_up_after_greeting`` makes it end calls itself."""

    hang_up_after_greeting: bool = False
    incoming_status: int = 200
    #: The server's own base URL, known once it is bound.
    base: str = ""
    events: list[str] = field(default_factory=list)
    media_headers: list[dict[str, str]] = field(default_factory=list)
    metadata: list[dict[str, object]] = field(default_factory=list)


def make_app(acs: SimulatedAcs, client: CallAutomationClient, seen: FakeServer) -> QuartTrio:
    app = QuartTrio(__name__)
    key = jwt.PyJWK(acs.signer.jwks()["keys"][0]).key
    connections: dict[str, str] = {}

    def check_jwt(header: str | None) -> None:
        assert header is not None
        assert header.startswith("Bearer ")
        jwt.decode(
            header[7:],
            key,
            algorithms=["RS256"],
            issuer=acs.signer.issuer,
            audience=acs.resource_id,
        )

    @app.post("/api/incomingCall")
    async def incoming_call() -> tuple[str, int]:
        assert request.headers["aeg-event-type"] == "Notification"
        if seen.incoming_status != 200:
            return "", seen.incoming_status
        base = seen.base
        for event in await request.get_json():
            token = secrets.token_urlsafe(8)
            media = media_streaming_options(f"{base.replace('http', 'ws')}/ws/{token}")
            props = await client.answer_call(
                event["data"]["incomingCallContext"],
                f"{base}/api/callbacks/{token}",
                media_streaming=media,
            )
            connections[token] = props.call_connection_id
        return "", 200

    @app.post("/api/callbacks/<token>")
    async def callbacks(token: str) -> tuple[str, int]:
        check_jwt(request.headers.get("Authorization"))
        seen.events.extend(event["type"].rsplit(".", 1)[1] for event in await request.get_json())
        return "", 200

    @app.websocket("/ws/<token>")
    async def media(token: str) -> None:
        check_jwt(websocket.headers.get("Authorization"))
        seen.media_headers.append({k.lower(): v for k, v in websocket.headers.items()})
        seen.metadata.append(json.loads(await websocket.receive()))
        await agent(token)

    async def speak(seconds: float) -> None:
        """Send ``seconds`` of audio in 100 ms chunks, 100 ms ahead of real time."""
        pcm = tone(seconds).tobytes()
        chunk = RATE // 10 * 2
        start = trio.current_time()
        for n, offset in enumerate(range(0, len(pcm), chunk)):
            await trio.sleep_until(start + (n - 1) * 0.1)
            await websocket.send(audio_data(pcm[offset : offset + chunk]))

    async def agent(token: str) -> None:
        await speak(0.3)  # greeting
        if seen.hang_up_after_greeting:
            await trio.sleep(0.5)
            await client.get_call_connection(connections[token]).hang_up(is_for_everyone=True)
        voiced, quiet = 0, 0
        async with trio.open_nursery() as nursery:
            answering: trio.CancelScope | None = None

            async def answer() -> None:
                nonlocal answering
                with trio.CancelScope() as answering:
                    await speak(0.8)
                    await trio.sleep(0.1)  # until it has played out at ACS
                answering = None

            while True:
                frame = json.loads(await websocket.receive())["audioData"]
                if frame["silent"]:
                    quiet += 1
                    if voiced >= 5 and quiet == 10:  # 200 ms of silence after speech: answer
                        voiced = 0
                        nursery.start_soon(answer)
                else:
                    quiet = 0
                    voiced += 1
                    if voiced == 3 and answering is not None:  # caller talks over us
                        answering.cancel()
                        await websocket.send(STOP_AUDIO)

    return app


@asynccontextmanager
async def running_call_setup(seen: FakeServer) -> AsyncIterator[tuple[SimulatedAcs, str]]:
    async with (
        open_simulated_acs() as acs,
        httpx.AsyncClient(verify=acs.tls.client_context()) as http,
    ):
        client = CallAutomationClient.from_connection_string(
            acs.connection_string, transport=HttpxTransport(http)
        )
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        stop = trio.Event()
        app = make_app(acs, client, seen)
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, app, config, shutdown_trigger=stop.wait))
            seen.base = binds[0]
            try:
                yield acs, seen.base
            finally:
                stop.set()
                with trio.move_on_after(2, shield=True):
                    await client.close()


async def test_a_polite_call_has_two_timed_turns(caller_wav: Path) -> None:
    seen = FakeServer()
    async with running_call_setup(seen) as (acs, server):
        with trio.fail_after(30):
            report = await acs.place_call(server, FAST, wav=caller_wav)
    assert report.ok, report.failure
    assert report.hung_up_by == "simulator"
    assert report.close_code == 1000
    assert report.audio_format == "pcm24KMono"
    assert seen.events == ["CallConnected", "MediaStreamingStarted", "CallDisconnected"]
    assert seen.metadata[0]["audioMetadata"] == {
        "subscriptionId": seen.metadata[0]["audioMetadata"]["subscriptionId"],  # type: ignore[index]
        "encoding": "PCM", "sampleRate": 24000, "channels": 1, "length": 960,
    }  # fmt: skip
    headers = seen.media_headers[0]
    assert headers["x-ms-call-connection-id"] == report.call_connection_id
    assert headers["x-ms-call-correlation-id"] == report.correlation_id
    assert [t.utterance for t in report.turns] == [1, 2]
    for turn in report.turns:  # the agent answers after 200 ms of silence
        assert turn.ttfa_ms is not None
        assert 150 < turn.ttfa_ms < 600
    assert report.stop_audio_s == []
    assert report.shapes == {"documented": report.frames_received}
    assert report.deviations == {}
    assert report.received_audio_ms == pytest.approx(1900)
    # 50 frames per second, real time, every frame sent.
    assert report.frames_sent == pytest.approx(report.duration_s * 50, rel=0.15)
    assert report.silent_frames_sent > 0


async def test_barge_in_is_measured_until_stop_audio(caller_wav: Path, tmp_path: Path) -> None:
    seen = FakeServer()
    options = CallOptions(**{**FAST.__dict__, "barge_in": True, "record_dir": tmp_path / "rec"})
    async with running_call_setup(seen) as (acs, server):
        with trio.fail_after(30):
            report = await acs.place_call(server, options, wav=caller_wav)
    assert report.ok, report.failure
    assert len(report.stop_audio_s) == 1
    barge = report.turns[1]
    assert barge.barge_in
    assert barge.stop_audio_latency_ms is not None
    assert 40 <= barge.stop_audio_latency_ms < 300  # 3 voiced frames, then StopAudio
    assert report.discarded_audio_ms > 0
    assert report.recording is not None
    assert await trio.Path(report.recording).exists()


async def test_server_hanging_up_mid_script_fails_the_call(caller_wav: Path) -> None:
    seen = FakeServer(hang_up_after_greeting=True)
    async with running_call_setup(seen) as (acs, server):
        with trio.fail_after(30):
            report = await acs.place_call(server, FAST, wav=caller_wav)
    assert report.hung_up_by == "server (REST terminate (hang_up for everyone))"
    assert report.failure is not None
    assert report.failure.startswith("server (REST terminate")
    assert seen.events[-1] == "CallDisconnected"


async def test_webhook_error_fails_the_call_quickly(caller_wav: Path) -> None:
    seen = FakeServer(incoming_status=500)
    async with running_call_setup(seen) as (acs, server):
        with trio.fail_after(10):
            aggregate = await acs.place_calls(server, FAST, wav=caller_wav, calls=3, concurrency=2)
    assert [c.failure for c in aggregate.calls] == ["IncomingCall webhook answered HTTP 500"] * 3
    assert seen.events == []
