"""Stories of browser calls through the softphone routes, under the mock clock.

The "page" here is Quart's test websocket client speaking what softphone.js speaks (the ACS
media protocol on the media socket, JSON events on the side channel); the call is the real
``run_call`` and the model a :class:`~tests.fakes.FakeModel`.  The same page in a real Chromium
is tested in ``test_softphone_browser.py``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import trio
from quart.testing.connections import WebsocketDisconnectError, WebsocketResponseError
from trio.testing import wait_all_tasks_blocked

from acs_trio.config import (
    SOFTPHONE_EVENT_QUEUE,
    SOFTPHONE_MAX_CALLS,
    SOFTPHONE_MEDIA_CONNECT_S,
    AgentSettings,
    CallLimits,
    Observability,
    Settings,
    SoftphoneSettings,
)
from acs_trio.control.app import create_app
from acs_trio.control.softphone import BrowserCall, SoftphoneCalls, create_phone_app
from acs_trio.errors import ConfigError
from tests.acs_service import FakeAcsService, incoming_call_event
from tests.control.test_app import StandInCalls, settings as acs_settings
from tests.fakes import FakeModel, pcm_tone

TOKEN = "t" * 32
PAGE = f"/softphone/{TOKEN}"


def metadata(rate: int = 24000) -> str:
    return json.dumps(
        {
            "kind": "AudioMetadata",
            "audioMetadata": {
                "subscriptionId": "sub-1",
                "encoding": "PCM",
                "sampleRate": rate,
                "channels": 1,
                "length": rate // 50 * 2,
            },
        }
    )


def audio_frame(pcm: bytes) -> str:
    return json.dumps(
        {
            "kind": "AudioData",
            "audioData": {
                "timestamp": "2026-12-07T09:00:00.000Z",
                "participantRawID": "8:softphone:test",
                "data": base64.b64encode(pcm).decode(),
                "silent": False,
            },
        }
    )


@dataclass
class Phone:
    app: Any
    client: Any
    model: FakeModel
    nursery: trio.Nursery

    @asynccontextmanager
    async def events(self) -> AsyncIterator[Any]:
        async with self.client.websocket(f"{PAGE}/events") as ws:
            yield ws


@asynccontextmanager
async def phone(nursery: trio.Nursery, agent: AgentSettings | None = None) -> AsyncIterator[Phone]:
    model = FakeModel(nursery)
    settings = Settings(agent=agent or AgentSettings(greeting=None))
    app = create_phone_app(settings, SoftphoneSettings(token=TOKEN), model.connect)
    async with app.test_app() as test_app:
        yield Phone(app, test_app.test_client(), model, nursery)


async def next_event(ws: Any) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await ws.receive())
    return event


async def events_until(ws: Any, kind: str) -> list[dict[str, Any]]:
    seen = []
    while True:
        seen.append(await next_event(ws))
        if seen[-1]["type"] == kind:
            return seen


async def close_code(ws: Any) -> int:
    """Read until the server closes the socket; its close code."""
    while True:
        try:
            await ws.receive()
        except WebsocketDisconnectError as exc:
            code: int = exc.args[0]
            return code


async def refusal(client: Any, path: str) -> int | None:
    status = None
    try:
        async with client.websocket(path) as ws:
            await ws.receive()
    except* WebsocketResponseError as group:
        status = group.exceptions[0].response.status_code  # type: ignore[attr-defined]
    return status


# -- the page and its token ---------------------------------------------------------------------


async def test_the_page_and_its_files_are_behind_the_token(nursery: trio.Nursery) -> None:
    async with phone(nursery) as p:
        page = await p.client.get(f"{PAGE}/")
        assert page.status_code == 200
        html = await page.get_data(as_text=True)
        assert 'src="softphone.js"' in html and 'id="call"' in html
        assert page.headers["Referrer-Policy"] == "no-referrer"
        assert page.headers["Cache-Control"] == "no-store"
        for name, kind in [("softphone.js", "javascript"), ("worklet.js", "javascript")]:
            response = await p.client.get(f"{PAGE}/{name}")
            assert response.status_code == 200 and kind in response.headers["Content-Type"]
        assert (await p.client.get(f"{PAGE}/../app.py")).status_code == 404
        assert (await p.client.get(f"{PAGE}/nope.js")).status_code == 404
        wrong = "w" * 32
        assert (await p.client.get(f"/softphone/{wrong}/")).status_code == 403
        assert (await p.client.get(f"/softphone/{wrong}/softphone.js")).status_code == 403
        assert await refusal(p.client, f"/softphone/{wrong}/events") == 403
        assert await refusal(p.client, f"{PAGE}/media/not-a-call") == 403


def acs_env() -> dict[str, str]:
    return {
        "ACS_CONNECTION_STRING": "endpoint=https://acs.test/;accesskey=QUJDRA==",
        "PUBLIC_BASE_URL": "https://bot.test",
        "ACS_RESOURCE_ID": "6b0c6a0e-0000-4000-8000-000000000001",
        "REALTIME_URL": "ws://127.0.0.1:1/v1/realtime",
    }


async def test_serve_has_no_softphone_unless_enabled(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.from_env(acs_env())
    assert settings.softphone is None
    async with create_app(settings).test_app() as test_app:
        client = test_app.test_client()
        assert (await client.get(f"{PAGE}/")).status_code == 404
        assert await refusal(client, f"{PAGE}/events") == 404

    enabled = Settings.from_env({**acs_env(), "SOFTPHONE": "1", "SOFTPHONE_TOKEN": TOKEN})
    assert enabled.softphone == SoftphoneSettings(token=TOKEN)
    assert TOKEN not in repr(enabled)
    async with create_app(enabled).test_app() as test_app:
        client = test_app.test_client()
        assert (await client.get(f"{PAGE}/")).status_code == 200
        assert (await client.get(f"/softphone/{'x' * 32}/")).status_code == 403
    # The start-up line names the URL, but never the whole token (logs are not secret).
    started = [r.getMessage() for r in caplog.records if "SOFTPHONE=1" in r.getMessage()]
    assert started and "https://bot.test/softphone/tttt…/" in started[0]
    assert not [r for r in caplog.records if TOKEN in r.getMessage()]


def test_softphone_settings_fail_closed() -> None:
    # serve cannot show a generated token without logging it: the operator must choose one.
    with pytest.raises(ConfigError, match="SOFTPHONE=1 needs SOFTPHONE_TOKEN"):
        Settings.from_env({"SOFTPHONE": "1"})
    with pytest.raises(ConfigError, match="SOFTPHONE_TOKEN must be at least 22"):
        Settings.from_env({"SOFTPHONE": "1", "SOFTPHONE_TOKEN": "short"})
    with pytest.raises(ConfigError, match="SOFTPHONE_TOKEN must be at least 22"):
        Settings.from_env({"SOFTPHONE": "1", "SOFTPHONE_TOKEN": "a/b" * 10})
    with pytest.raises(ConfigError, match="SOFTPHONE is not 1"):
        Settings.from_env({"SOFTPHONE_TOKEN": TOKEN})
    with pytest.raises(ConfigError, match="SOFTPHONE='maybe' is invalid"):
        Settings.from_env({"SOFTPHONE": "maybe"})


# -- one browser call ---------------------------------------------------------------------------


async def test_a_browser_call_runs_the_same_bridge_and_reports_events(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    agent = AgentSettings(greeting="Say hello.")
    async with phone(nursery, agent) as p, p.events() as events:
        hello = await next_event(events)
        assert hello["type"] == "call" and hello["call_id"].startswith("softphone-")
        assert hello["media_path"].startswith(f"{PAGE}/media/")
        async with p.client.websocket(hello["media_path"]) as media:
            await media.send(metadata())
            assert (await next_event(events))["type"] == "call_started"
            # The greeting is asked for, as on a phone call.
            await p.model.wait_for("response.create")
            # The greeting: 200 ms of agent audio reaches the page as ACS AudioData, paced.
            await p.model.speak(200)
            frames = [json.loads(await media.receive()) for _ in range(10)]
            assert {f["Kind"] for f in frames} == {"AudioData"}
            assert base64.b64decode(frames[0]["AudioData"]["Data"]) == pcm_tone(20, 2000)
            greeting = await next_event(events)
            assert greeting == {"type": "latency", "metric": "greeting_ttfa", "ms": 0.0}
            # The page's caller audio reaches the model.
            for _ in range(3):
                await media.send(audio_frame(pcm_tone(20, 500)))
            await wait_all_tasks_blocked()
            assert p.model.appended_pcm() == pcm_tone(60, 500)
            # A turn, once the greeting has been heard: transcripts of both sides, the time to
            # first audio.
            await trio.sleep(1)
            await p.model.speech_started("item_u1")
            await p.model.speech_stopped("item_u1")
            await p.model.send(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "event_id": "ev_t1",
                    "item_id": "item_u1",
                    "content_index": 0,
                    "transcript": "Where is my order?",
                }
            )
            await trio.sleep(0.3)
            response_id, item_id = await p.model.start_response()
            await p.model.audio_delta(response_id, item_id, pcm_tone(1000, 2000))
            await p.model.send(
                {
                    "type": "response.output_audio_transcript.done",
                    "event_id": "ev_t2",
                    "response_id": response_id,
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "transcript": "It ships today.",
                }
            )
            seen = await events_until(events, "latency")
            assert seen == [
                {"type": "speech_started", "barge_in": False},
                {"type": "speech_stopped", "turn": 1},
                {
                    "type": "transcript",
                    "role": "caller",
                    "item_id": "item_u1",
                    "text": "Where is my order?",
                },
                {
                    "type": "transcript",
                    "role": "agent",
                    "item_id": item_id,
                    "text": "It ships today.",
                },
                {"type": "latency", "metric": "ttfa", "ms": 300.0},
            ]
            # Barge-in 200 ms into the answer: StopAudio reaches the page at once.
            await trio.sleep(0.2)
            await p.model.speech_started("item_u2")
            stop_at = None
            while stop_at is None:
                message = json.loads(await media.receive())
                if message["Kind"] == "StopAudio":
                    stop_at = trio.current_time()
            assert await events_until(events, "latency") == [
                {"type": "speech_started", "barge_in": True},
                {"type": "latency", "metric": "barge_in", "ms": 0.0},
            ]
            # Hang up: the page closes its media socket, as ACS does.
        ended = await events_until(events, "call_ended")
        assert ended[-1]["reason"] == "caller_hung_up"
        assert ended[-1]["turns"] == 1 and ended[-1]["barge_ins"] == 1
        # The server closes the side channel once the call has ended.
        with pytest.raises(WebsocketDisconnectError):
            await events.receive()
        # The media path was a one-time secret.
        assert await refusal(p.client, hello["media_path"]) == 403
    assert p.model.seen.closed is not None


def transcript_lines(directory: Path, call_id: str) -> list[dict[str, Any]]:
    [path] = directory.glob(f"*/*_{call_id}.transcript.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_on_serve_the_page_metrics_and_recorder_observe_the_same_call(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """With SOFTPHONE=1 the page's events are one observer of the call, beside metrics and the
    recorder (control/observe.py): each of them sees the call, and the page's events are the same."""
    model = FakeModel(nursery)
    settings = replace(
        acs_settings(),
        agent=AgentSettings(greeting=None),
        softphone=SoftphoneSettings(token=TOKEN),
        observability=Observability(recordings_dir=str(tmp_path)),
    )
    app = create_app(
        settings, http_transport=FakeAcsService().transport, connect_model=model.connect
    )
    async with app.test_app() as test_app:
        client = test_app.test_client()
        async with client.websocket(f"{PAGE}/events") as events:
            hello = await next_event(events)
            async with client.websocket(hello["media_path"]) as media:
                await media.send(metadata())
                assert await next_event(events) == {
                    "type": "call_started",
                    "call_id": hello["call_id"],
                }
                await model.wait_for("session.update")
                await model.speech_started("item_u1")
                await trio.sleep(0.5)
                await model.speech_stopped("item_u1")
                await model.send(
                    {
                        "type": "conversation.item.input_audio_transcription.completed",
                        "event_id": "ev_t1",
                        "item_id": "item_u1",
                        "content_index": 0,
                        "transcript": "Hello?",
                    }
                )
                assert await events_until(events, "transcript") == [
                    {"type": "speech_started", "barge_in": False},
                    {"type": "speech_stopped", "turn": 1},
                    {
                        "type": "transcript",
                        "role": "caller",
                        "item_id": "item_u1",
                        "text": "Hello?",
                    },
                ]
            ended = await events_until(events, "call_ended")
            assert ended[-1]["reason"] == "caller_hung_up" and ended[-1]["turns"] == 1
            with pytest.raises(WebsocketDisconnectError):
                await events.receive()  # closed after the call (and its recording) ended
        scrape = await (await client.get("/metrics")).get_data(as_text=True)
        assert 'acs_trio_calls_ended_total{reason="caller_hung_up"} 1.0' in scrape
    lines = transcript_lines(tmp_path, hello["call_id"])
    assert [(line["type"], line.get("text")) for line in lines] == [
        ("call_started", None),
        ("speech_started", None),
        ("speech_stopped", None),
        ("transcript", "Hello?"),
        ("call_ended", None),
    ]


async def test_a_page_that_falls_behind_loses_events_and_never_slows_the_call() -> None:
    """The page's observer queues at most SOFTPHONE_EVENT_QUEUE events; the rest are dropped and
    counted (logged at the end of the call), and a gone page is no error."""
    call = SoftphoneCalls().open()
    assert isinstance(call, BrowserCall)
    observer = call.handle.observer
    for n in range(SOFTPHONE_EVENT_QUEUE + 5):
        observer.on_transcript("agent", f"line {n}", 0.0, item_id=f"item_{n}")
    assert call.events_dropped == 5
    first = call.events_recv.receive_nowait()
    assert first == {"type": "transcript", "role": "agent", "item_id": "item_0", "text": "line 0"}
    await call.events_recv.aclose()
    observer.on_ttfa(12.34, greeting=False)  # the page's socket is gone: silently nothing
    assert call.events_dropped == 5


# -- bad input and endings ----------------------------------------------------------------------


async def test_junk_from_the_page_is_bad_acs_input(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async with phone(nursery) as p, p.events() as events:
        hello = await next_event(events)
        async with p.client.websocket(hello["media_path"]) as media:
            await media.send(metadata())
            await media.send(b"\x00\x01binary")
            await media.send("not json")
            await media.send(json.dumps({"kind": "AudioData", "audioData": {"data": "%%%"}}))
            await media.send(audio_frame(pcm_tone(60, 700)))
            await wait_all_tasks_blocked()
            # The call goes on: audio after the junk still reaches the model.
            assert p.model.appended_pcm() == pcm_tone(60, 700)
        ended = await events_until(events, "call_ended")
        assert ended[-1]["reason"] == "caller_hung_up"
        assert ended[-1]["bad_acs_messages"] == 3


async def test_a_wrong_sample_rate_fails_the_call_alone(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async with phone(nursery) as p, p.events() as events:
        hello = await next_event(events)
        async with p.client.websocket(hello["media_path"]) as media:
            await media.send(metadata(rate=44100))
            ended = await events_until(events, "call_ended")
            assert ended[-1]["reason"] == "acs_protocol_error"
            assert "unsupported audio format" in ended[-1]["detail"]
            assert await close_code(media) == 1007
        # The server is fine: the next call works.
        async with p.events() as again:
            assert (await next_event(again))["type"] == "call"


async def test_closing_the_tab_ends_the_call_like_a_hang_up(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    media_closed: list[int] = []

    async def media_socket(path: str, task_status: trio.TaskStatus[None]) -> None:
        async with p.client.websocket(path) as media:
            await media.send(metadata())
            task_status.started()
            try:
                while True:
                    await media.receive()
            except WebsocketDisconnectError as exc:
                media_closed.append(exc.args[0])

    async with phone(nursery) as p:
        async with p.events() as events:
            hello = await next_event(events)
            await nursery.start(media_socket, hello["media_path"])
            await p.model.connected.wait()
        # The side channel closed (the tab went away): the server ends the call and closes
        # the media socket and the model socket.
        await wait_all_tasks_blocked()
        assert media_closed == [1000]
        assert p.model.seen.closed is not None
        assert p.model.seen.closed.reason == "call ended: caller_hung_up"


async def test_a_page_that_never_opens_media_is_released(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async with phone(nursery) as p, p.events() as events:
        hello = await next_event(events)
        start = trio.current_time()
        assert await next_event(events) == {
            "type": "call_ended",
            "reason": "media_timeout",
            "detail": "",
        }
        assert trio.current_time() - start == SOFTPHONE_MEDIA_CONNECT_S
        assert await refusal(p.client, hello["media_path"]) == 403
        assert not p.model.connected.is_set()


async def test_shutdown_ends_browser_calls(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async with phone(nursery) as p, p.events() as events:
        hello = await next_event(events)
        async with p.client.websocket(hello["media_path"]) as media:
            await media.send(metadata())
            await p.model.connected.wait()
            calls = p.app.extensions["acs_trio"]
            await calls.stop()  # what `serve` runs on SIGINT/SIGTERM
            assert calls.calls == {}
            assert await close_code(media) == 1001
        ended = await events_until(events, "call_ended")
        assert ended[-1]["reason"] == "shutdown"
        # Draining: no new call.
        assert await refusal(p.client, f"{PAGE}/events") == 503


async def test_an_unexpected_error_is_logged_without_the_tokens(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken_run_call(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the call")

    model = FakeModel(nursery)
    app = create_phone_app(
        Settings(), SoftphoneSettings(token=TOKEN), model.connect, run_call=broken_run_call
    )
    async with app.test_app() as test_app:
        client = test_app.test_client()
        async with client.websocket(f"{PAGE}/events") as events:
            hello = await next_event(events)
            secret = hello["media_path"].rpartition("/")[2]
            async with client.websocket(hello["media_path"]) as media:
                with pytest.raises(WebsocketDisconnectError):
                    await media.receive()
    # Quart's own "Exception on websocket <path>" line: the path is there, its secrets are not.
    errors = [r for r in caplog.records if "Exception on websocket" in r.getMessage()]
    assert errors and errors[0].getMessage().endswith("/softphone/tttt…/media/" + secret[:4] + "…")
    assert not [r for r in caplog.records if TOKEN in r.getMessage() or secret in r.getMessage()]


async def test_browser_calls_count_against_max_concurrent_calls(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """On a deployed server a browser call takes one of the MAX_CONCURRENT_CALLS slots."""
    acs, stand_in = FakeAcsService(), StandInCalls()
    app = create_app(
        replace(acs_settings(max_calls=1), softphone=SoftphoneSettings(token=TOKEN)),
        http_transport=acs.transport,
        run_call=stand_in.run_call,
    )
    async with app.test_app() as test_app:
        client = test_app.test_client()
        async with client.websocket(f"{PAGE}/events") as events:
            assert (await next_event(events))["type"] == "call"
            # The only slot is the browser's: a phone call is not answered, and not ready.
            assert (await client.get("/readyz")).status_code == 503
            await client.post("/api/incomingCall", json=[incoming_call_event("e-1", "ctx-1")])
            await wait_all_tasks_blocked()
            assert acs.answers == []
            assert "full" in caplog.text
        await wait_all_tasks_blocked()  # the page left: its call ended and was released
        await client.post("/api/incomingCall", json=[incoming_call_event("e-2", "ctx-2")])
        await wait_all_tasks_blocked()
        assert len(acs.answers) == 1
        # Now the phone call has the slot: no browser call.
        assert await refusal(client, f"{PAGE}/events") == 503
        assert "MAX_CONCURRENT_CALLS" in caplog.text


async def test_a_page_flooding_its_one_way_event_socket_fails_its_call(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The side channel is one-way: past the bad-message limit, input there ends the call."""
    async with phone(nursery) as p, p.events() as events:
        hello = await next_event(events)
        async with p.client.websocket(hello["media_path"]) as media:
            await media.send(metadata())
            await p.model.connected.wait()
            for _ in range(CallLimits().max_bad_messages):
                await events.send("x" * 1000)
            await wait_all_tasks_blocked()
            assert p.model.seen.closed is None  # up to the limit the page's chatter is ignored
            await events.send("x" * 1000)
            assert await close_code(media) == 1007
        assert p.model.seen.closed is not None
        assert p.model.seen.closed.reason == "call ended: acs_protocol_error"


async def test_at_most_softphone_max_calls_browser_calls(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async with phone(nursery) as p, AsyncExitStack() as stack:
        for _ in range(SOFTPHONE_MAX_CALLS):
            events = await stack.enter_async_context(p.events())
            assert (await next_event(events))["type"] == "call"
        assert await refusal(p.client, f"{PAGE}/events") == 503
