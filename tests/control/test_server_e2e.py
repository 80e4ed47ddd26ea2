"""One call end to end through hypercorn on 127.0.0.1, with the real run_call.

Story: Event Grid delivers IncomingCall → the server answers (ACS REST is a MockTransport) → "ACS"
opens the media socket with its JWT → caller audio reaches a fake realtime model and the model's
greeting audio reaches the caller → ACS posts CallDisconnected → both sockets close and every
task of the call is gone.  Real time, real sockets; a few hundred ms.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from hypercorn.trio import serve as hypercorn_serve
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
    wrap_client_stream,
)

from acs_trio.config import AcsSettings, ModelEndpoint, ServerSettings, Settings
from acs_trio.control.app import create_app
from acs_trio.control.server import hypercorn_config, serve
from acs_trio.errors import ConfigError
from tests.acs_service import (
    ISSUER,
    JWKS_URL,
    RESOURCE_ID,
    FakeAcsService,
    callback_event,
    incoming_call_event,
)
from tests.fakes import FakeAcs, pcm_tone


def _settings(model: ModelEndpoint | None) -> Settings:
    return Settings(
        model=model,
        acs=AcsSettings(
            connection_string="endpoint=https://acs.test/;accesskey=QUJDRA==",
            public_base_url="https://bot.test",
            resource_id=RESOURCE_ID,
            jwks_url=JWKS_URL,
            jwt_issuer=ISSUER,
        ),
        server=ServerSettings(shutdown_grace_s=0.5),
    )


class FakeRealtime:
    """A tiny GA realtime peer: records client events; answers response.create with audio."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.appended = trio.Event()
        self.closed = trio.Event()

    async def handler(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                event = json.loads(await ws.get_message())
                self.seen.append(event)
                if event["type"] == "input_audio_buffer.append":
                    self.appended.set()
                if event["type"] == "session.update":  # the bridge waits for the confirmation
                    updated = {"type": "session.updated", "session": event["session"]}
                    await ws.send_message(json.dumps(updated))
                if event["type"] == "response.create":
                    for message in _greeting():
                        await ws.send_message(json.dumps(message))
        except ConnectionClosed:
            self.closed.set()


async def _until_closed(ws: WebSocketConnection) -> None:
    """Read (greeting audio) until the server closes the socket."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await ws.get_message()


def _greeting() -> list[dict[str, Any]]:
    """docs/protocols/realtime.md GA server events for one 300 ms spoken response."""
    ids = {"response_id": "resp_1", "item_id": "item_1", "output_index": 0, "content_index": 0}
    delta = base64.b64encode(pcm_tone(100, 2000)).decode()
    return [
        {
            "type": "response.created",
            "event_id": "ev_1",
            "response": {"object": "realtime.response", "id": "resp_1", "status": "in_progress"},
        },
        *[
            {"type": "response.output_audio.delta", "event_id": f"ev_d{n}", "delta": delta, **ids}
            for n in range(3)
        ],
        {"type": "response.output_audio.done", "event_id": "ev_2", **ids},
        {
            "type": "response.done",
            "event_id": "ev_3",
            "response": {"object": "realtime.response", "id": "resp_1", "status": "completed"},
        },
    ]


async def test_one_call_through_hypercorn(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        model = FakeRealtime()
        model_server = await nursery.start(serve_websocket, model.handler, "127.0.0.1", 0, None)
        model_url = f"ws://127.0.0.1:{model_server.port}/v1/realtime"
        acs = FakeAcsService()
        app = create_app(_settings(ModelEndpoint(url=model_url)), http_transport=acs.transport)
        stop = trio.Event()
        [bind] = await nursery.start(
            lambda task_status: hypercorn_serve(
                app,
                hypercorn_config("127.0.0.1", 0),
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        )
        base = bind.replace("http://", "")
        plane = app.extensions["acs_trio"].plane

        async with httpx.AsyncClient(base_url=f"http://{base}", trust_env=False) as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 200
            response = await http.post(
                "/api/incomingCall", json=[incoming_call_event("e-1", "ctx-1")]
            )
            assert response.status_code == 200
            await acs.answer_seen.wait()  # answering runs after the 200, in the server's nursery
            token = acs.token_of(1)
            headers = [
                (b"authorization", acs.signer.bearer().encode()),
                (b"x-ms-call-connection-id", b"conn-1"),
                (b"x-ms-call-correlation-id", b"corr-1"),
                # Offered and declined: had hypercorn accepted it, this client (which did not
                # offer it through wsproto) would fail the handshake on the unexpected extension.
                (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits"),
            ]
            # Our own TCP stream: trio-websocket 0.12.2's client never closes its socket when the
            # server closes first (``_aclose`` returns early), which would be a ResourceWarning.
            host, port = base.rsplit(":", 1)
            async with (
                await trio.open_tcp_stream(host, int(port)) as stream,
                trio.open_nursery() as ws_nursery,
            ):
                ws = await wrap_client_stream(
                    ws_nursery, stream, base, f"/ws/{token}", extra_headers=headers
                )
                caller = FakeAcs(ws)
                await caller.send_metadata()
                for _ in range(5):
                    await caller.send_frame(pcm_tone(20, 3000))
                await model.appended.wait()  # caller audio reached the model
                out = json.loads(await ws.get_message())  # the greeting reached the caller
                assert out["Kind"] == "AudioData"
                assert base64.b64decode(out["AudioData"]["Data"])

                hung_up = await http.post(
                    f"/api/callbacks/{token}",
                    json=[callback_event("CallDisconnected", "conn-1")],
                    headers={"Authorization": acs.signer.bearer()},
                )
                assert hung_up.status_code == 200
                await _until_closed(ws)
                assert ws.closed is not None
                assert ws.closed.code == 1000
            await model.closed.wait()
            await plane.wait_idle()  # the call's supervisor and tasks are gone
        assert acs.hang_ups == []  # ACS ended the call itself
        appended = [e for e in model.seen if e["type"] == "input_audio_buffer.append"]
        assert appended
        stop.set()


ACS_ENV = {
    "ACS_CONNECTION_STRING": "endpoint=https://acs.test/;accesskey=QUJDRA==",
    "PUBLIC_BASE_URL": "https://bot.test",
    "ACS_RESOURCE_ID": RESOURCE_ID,
}


def _env(**extra: str) -> dict[str, str]:
    """The parent's environment without any model setting, plus the ACS settings."""
    model_vars = {"REALTIME_URL", "AZURE_OPENAI_ENDPOINT", "OPENAI_API_KEY"}
    env = {k: v for k, v in os.environ.items() if k not in model_vars}
    return env | ACS_ENV | extra


async def test_serve_without_a_model_fails_closed_before_listening() -> None:
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "acs_trio", "serve", "--port", "1"],  # port 1: never bound
            env=_env(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 2
    [line] = result.stderr.decode().strip().splitlines()
    assert line.startswith("acs-trio serve: no realtime model configured")
    for name in ("AZURE_OPENAI_ENDPOINT", "OPENAI_API_KEY", "REALTIME_URL", "--local-peer"):
        assert name in line


def test_permessage_deflate_offers_are_declined() -> None:
    from hypercorn.protocol.ws_stream import Handshake

    hypercorn_config("127.0.0.1", 0)  # installs the decline
    hypercorn_config("127.0.0.1", 0)  # idempotent
    offer = [
        (b"connection", b"Upgrade"),
        (b"upgrade", b"websocket"),
        (b"sec-websocket-version", b"13"),
        (b"sec-websocket-key", base64.b64encode(b"0123456789abcdef")),
        (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits"),
    ]
    status, headers, connection = Handshake(offer, "1.1").accept(None, [])
    assert status == 101
    assert b"sec-websocket-extensions" not in dict(headers)
    assert not any(extension.enabled() for extension in connection._proto.extensions)


def test_create_app_without_a_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no realtime model configured"):
        create_app(_settings(None), http_transport=FakeAcsService().transport)


async def test_the_local_echo_peer_is_an_explicit_loud_opt_in() -> None:
    port = _free_port()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    [sys.executable, "-m", "acs_trio", "serve", "--local-peer"],
                    env=_env(HOST="127.0.0.1", PORT=str(port)),
                    stderr=subprocess.PIPE,
                    check=False,
                )
            )
            assert process.stderr is not None
            log = b""
            while b"serving on" not in log:
                chunk = await process.stderr.receive_some()
                assert chunk, log.decode()
                log += chunk
            async with httpx.AsyncClient(trust_env=False) as http:
                health = await http.get(f"http://127.0.0.1:{port}/healthz")
            assert health.status_code == 200
            process.send_signal(signal.SIGTERM)
    assert b"WARNING" in log
    assert b"ECHO TEST PEER" in log


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_sigterm_drains_live_calls_then_stops(nursery: trio.Nursery) -> None:
    acs = FakeAcsService()
    model_url = "ws://127.0.0.1:9/v1/realtime"  # never dialled: no media socket connects
    app = create_app(_settings(ModelEndpoint(url=model_url)), http_transport=acs.transport)
    stopped = trio.Event()

    async def run_server(task_status: trio.TaskStatus[list[str]]) -> None:
        await serve(app, hypercorn_config("127.0.0.1", 0), task_status=task_status)
        stopped.set()

    with trio.fail_after(5):
        [bind] = await nursery.start(run_server)
        async with httpx.AsyncClient(base_url=bind, trust_env=False) as http:
            await http.post("/api/incomingCall", json=[incoming_call_event("e-1", "ctx-1")])
            await acs.answer_seen.wait()
        # (client closed first: hypercorn waits up to graceful_timeout for keep-alive sockets)
        os.kill(os.getpid(), signal.SIGTERM)
        await stopped.wait()
    # grace (0.5 s) passed, the unfinished call was ended for shutdown and hung up
    assert acs.hang_ups == ["conn-1"]


async def test_workers_without_redis_fail_closed_in_one_line() -> None:
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "acs_trio", "serve", "--workers", "2", "--port", "1"],
            env=_env(REALTIME_URL="ws://127.0.0.1:9/v1/realtime"),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 2
    [line] = result.stderr.decode().strip().splitlines()
    assert line.startswith("acs-trio serve: --workers above 1 needs REDIS_URL")
