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
from typing import Any, cast

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

from acs_trio.config import AcsSettings, ModelEndpoint, ServerSettings, Settings, WebhookSettings
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
        webhook=WebhookSettings(incoming_call_secret=SECRET),
    )


SECRET = "e2e-webhook-secret-0123456789"
WEBHOOK = {"X-Incoming-Call-Secret": SECRET}


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
                "/api/incomingCall", json=[incoming_call_event("e-1", "ctx-1")], headers=WEBHOOK
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
                    ws_nursery, stream, base, f"/ws/{acs.media_token_of(1)}", extra_headers=headers
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
    "INCOMING_CALL_SECRET": SECRET,
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
            await http.post(
                "/api/incomingCall", json=[incoming_call_event("e-1", "ctx-1")], headers=WEBHOOK
            )
            await acs.answer_seen.wait()
        # (client closed first: hypercorn waits up to graceful_timeout for keep-alive sockets)
        os.kill(os.getpid(), signal.SIGTERM)
        await stopped.wait()
    # grace (0.5 s) passed, the unfinished call was ended for shutdown and hung up
    assert acs.hang_ups == ["conn-1"]


async def test_an_oversized_media_message_ends_the_call_and_the_model_socket_at_once(
    nursery: trio.Nursery,
) -> None:
    """hypercorn closes the media socket with 1009 on a 2 MB AudioData; the call must end too.

    The peer here never answers that close and keeps streaming (a raw wsproto client).  Before
    the fix the app never heard of the close: the call and its model socket lived on until
    MEDIA_TIMEOUT_S (20 s).  Real hypercorn, real run_call, real sockets.
    """
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

    model = FakeRealtime()
    model_server = await nursery.start(serve_websocket, model.handler, "127.0.0.1", 0, None)
    model_url = f"ws://127.0.0.1:{model_server.port}/v1/realtime"
    acs = FakeAcsService()
    app = create_app(_settings(ModelEndpoint(url=model_url)), http_transport=acs.transport)
    stop = trio.Event()
    [bind] = await nursery.start(
        partial(hypercorn_serve, app, hypercorn_config("127.0.0.1", 0), shutdown_trigger=stop.wait)
    )
    host, port = bind.replace("http://", "").rsplit(":", 1)
    plane = app.extensions["acs_trio"].plane
    with trio.fail_after(10):
        async with httpx.AsyncClient(base_url=bind, trust_env=False) as http:
            await http.post(
                "/api/incomingCall", json=[incoming_call_event("e-1", "ctx-1")], headers=WEBHOOK
            )
            await acs.answer_seen.wait()
        await trio.sleep(0.05)  # the answer's result is applied
        client = WSConnection(ConnectionType.CLIENT)
        seen: list[Any] = []
        async with (
            await trio.open_tcp_stream(host, int(port)) as stream,
            trio.open_nursery() as reader,
        ):
            headers = [
                (b"authorization", acs.signer.bearer().encode()),
                (b"x-ms-call-connection-id", b"conn-1"),
            ]
            target = f"/ws/{acs.media_token_of(1)}"
            await stream.send_all(
                client.send(Request(host=host, target=target, extra_headers=headers))
            )

            accepted = trio.Event()

            async def read_events() -> None:
                while data := await stream.receive_some():
                    client.receive_data(data)
                    seen.extend(client.events())  # never answers a close
                    if any(isinstance(e, AcceptConnection) for e in seen):
                        accepted.set()

            reader.start_soon(read_events)
            await accepted.wait()
            fake = FakeAcs(cast(Any, None))
            frame = {"kind": "AudioData", "audioData": {"data": base64.b64encode(
                pcm_tone(20, 3000)).decode(), "silent": False}}  # fmt: skip
            metadata = {"kind": "AudioMetadata", "audioMetadata": {
                "subscriptionId": "s", "encoding": "PCM", "sampleRate": 24000, "channels": 1,
                "length": fake.frame_bytes}}  # fmt: skip
            await stream.send_all(client.send(TextMessage(json.dumps(metadata))))
            await stream.send_all(client.send(TextMessage(json.dumps(frame))))
            await trio.sleep(0.3)
            # Encoded now: once the close arrives wsproto would refuse to send (the peer is deaf).
            frame_bytes = client.send(TextMessage(json.dumps(frame)))
            huge = dict(frame, audioData={"data": "A" * (2 * 2**20), "silent": False})
            await stream.send_all(client.send(TextMessage(json.dumps(huge))))
            sent_at = trio.current_time()
            with trio.move_on_after(1.5):  # ACS goes on streaming, deaf to the close
                while not model.closed.is_set():
                    await stream.send_all(frame_bytes)
                    await trio.sleep(0.02)
            closes = [e for e in seen if isinstance(e, CloseConnection)]
            assert [c.code for c in closes] == [1009]  # hypercorn's "message too big"
            assert model.closed.is_set(), "the model socket outlived the media socket"
            assert trio.current_time() - sent_at < 1.0
            # The model socket closes inside run_call's cleanup; the summary is stored when
            # run_call returns, a moment later (the ACS socket is closed last).
            [record] = plane.calls.values()
            with trio.fail_after(1):
                await record.media_done.wait()
            assert record.summary is not None and "1009" in record.summary.end_detail
            reader.cancel_scope.cancel()
    stop.set()


async def test_serve_without_the_webhook_secret_fails_closed_before_listening() -> None:
    env = _env(REALTIME_URL="ws://127.0.0.1:9/v1/realtime")
    del env["INCOMING_CALL_SECRET"]
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "acs_trio", "serve", "--port", "1"],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 2
    [line] = result.stderr.decode().strip().splitlines()
    assert line.startswith("acs-trio serve: INCOMING_CALL_SECRET must be set")


async def test_the_webhook_secret_is_checked_before_the_body_is_read(
    nursery: trio.Nursery,
) -> None:
    """Headers announcing a 60 KiB body, and no body: the 401 comes without waiting for it."""
    acs = FakeAcsService()
    app = create_app(
        _settings(ModelEndpoint(url="ws://127.0.0.1:9/v1/realtime")), http_transport=acs.transport
    )
    stop = trio.Event()
    [bind] = await nursery.start(
        partial(hypercorn_serve, app, hypercorn_config("127.0.0.1", 0), shutdown_trigger=stop.wait)
    )
    host, port = bind.replace("http://", "").rsplit(":", 1)
    with trio.fail_after(2):  # far below BODY_TIMEOUT_S (5 s): nobody waited for the body
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(
                b"POST /api/incomingCall HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 61440\r\n\r\n"
            )
            reply = await stream.receive_some()
    assert reply.startswith(b"HTTP/1.1 401")
    assert acs.answers == []
    stop.set()


def test_accepted_sockets_inherit_tcp_user_timeout_and_keepalive() -> None:
    from acs_trio.config import TCP_USER_TIMEOUT_S
    from acs_trio.control.server import ServerConfig

    config = ServerConfig()
    config.bind = ["127.0.0.1:0"]
    sockets = config.create_sockets()
    [listener] = sockets.insecure_sockets
    try:
        listener.listen()
        with socket.create_connection(listener.getsockname()[:2]):
            accepted, _ = listener.accept()
            with accepted:
                user_timeout = accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
                assert user_timeout == int(TCP_USER_TIMEOUT_S * 1000)
                assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    finally:
        listener.close()


async def test_a_re_established_media_socket_resumes_the_real_call(nursery: trio.Nursery) -> None:
    """Through hypercorn with the real run_call: ACS drops the media socket (TCP gone, no close
    handshake) and opens it again 0.5 s later with the same x-ms-call-connection-id and a fresh
    JWT.  The call resumes on a new model session (no second greeting) and nobody hangs up."""
    model = FakeRealtime()
    model_server = await nursery.start(serve_websocket, model.handler, "127.0.0.1", 0, None)
    model_url = f"ws://127.0.0.1:{model_server.port}/v1/realtime"
    acs = FakeAcsService()
    app = create_app(_settings(ModelEndpoint(url=model_url)), http_transport=acs.transport)
    stop = trio.Event()
    [bind] = await nursery.start(
        partial(hypercorn_serve, app, hypercorn_config("127.0.0.1", 0), shutdown_trigger=stop.wait)
    )
    base = bind.replace("http://", "")
    host, port = base.rsplit(":", 1)
    plane = app.extensions["acs_trio"].plane

    async def media_session(drop: bool) -> None:
        headers = [
            (b"authorization", acs.signer.bearer().encode()),  # a fresh JWT each time
            (b"x-ms-call-connection-id", b"conn-1"),
        ]
        async with (
            await trio.open_tcp_stream(host, int(port)) as stream,
            trio.open_nursery() as ws_nursery,
        ):
            ws = await wrap_client_stream(
                ws_nursery, stream, base, f"/ws/{acs.media_token_of(1)}", extra_headers=headers
            )
            caller = FakeAcs(ws)
            await caller.send_metadata()
            model.appended = trio.Event()
            for _ in range(5):
                await caller.send_frame(pcm_tone(20, 3000))
            await model.appended.wait()  # this session's caller audio reached a model
            if drop:
                await stream.aclose()  # the network drops: no close frame
            else:
                await _until_closed(ws)
            ws_nursery.cancel_scope.cancel()

    with trio.fail_after(15):
        async with httpx.AsyncClient(base_url=bind, trust_env=False) as http:
            await http.post(
                "/api/incomingCall", json=[incoming_call_event("e-1", "ctx-1")], headers=WEBHOOK
            )
            await acs.answer_seen.wait()
            await trio.sleep(0.05)
            await media_session(drop=True)
            await trio.sleep(0.5)
            async with trio.open_nursery() as second:
                second.start_soon(media_session, False)
                await trio.sleep(6)  # past the 5 s disconnect grace: the call is still up
                assert acs.hang_up_attempts == []
                [record] = plane.calls.values()
                assert record.media_sockets == 2
                hung_up = await http.post(
                    f"/api/callbacks/{acs.token_of(1)}",
                    json=[callback_event("CallDisconnected", "conn-1")],
                    headers={"Authorization": acs.signer.bearer()},
                )
                assert hung_up.status_code == 200
            await plane.wait_idle()
    sessions = [e for e in model.seen if e["type"] == "session.update"]
    greetings = [e for e in model.seen if e["type"] == "response.create"]
    assert len(sessions) >= 2  # the resumed call has its own model session
    assert len(greetings) == 1  # and is not greeted twice
    assert acs.hang_up_attempts == []
    stop.set()


async def test_a_media_socket_re_established_while_the_old_one_lingers_takes_over(
    nursery: trio.Nursery,
) -> None:
    """Through hypercorn with the real run_call: the old socket's TCP connection is still open
    (a drop our side has not noticed) when ACS reconnects with the same x-ms-call-connection-id
    and a fresh JWT.  The old socket is closed by us, the call resumes on the new one without a
    second greeting, and nobody hangs up."""
    model = FakeRealtime()
    model_server = await nursery.start(serve_websocket, model.handler, "127.0.0.1", 0, None)
    model_url = f"ws://127.0.0.1:{model_server.port}/v1/realtime"
    acs = FakeAcsService()
    app = create_app(_settings(ModelEndpoint(url=model_url)), http_transport=acs.transport)
    stop = trio.Event()
    [bind] = await nursery.start(
        partial(hypercorn_serve, app, hypercorn_config("127.0.0.1", 0), shutdown_trigger=stop.wait)
    )
    base = bind.replace("http://", "")
    host, port = base.rsplit(":", 1)
    plane = app.extensions["acs_trio"].plane
    old_closed = trio.Event()

    async def media_session(linger: bool) -> None:
        headers = [
            (b"authorization", acs.signer.bearer().encode()),  # a fresh JWT each time
            (b"x-ms-call-connection-id", b"conn-1"),
        ]
        async with (
            await trio.open_tcp_stream(host, int(port)) as stream,
            trio.open_nursery() as ws_nursery,
        ):
            ws = await wrap_client_stream(
                ws_nursery, stream, base, f"/ws/{acs.media_token_of(1)}", extra_headers=headers
            )
            caller = FakeAcs(ws)
            await caller.send_metadata()
            model.appended = trio.Event()
            for _ in range(5):
                await caller.send_frame(pcm_tone(20, 3000))
            await model.appended.wait()  # this session's caller audio reached a model
            await _until_closed(ws)  # the old one: until we close it; the new one: the caller's end
            if linger:
                old_closed.set()
            ws_nursery.cancel_scope.cancel()

    with trio.fail_after(15):
        async with httpx.AsyncClient(base_url=bind, trust_env=False) as http:
            await http.post(
                "/api/incomingCall", json=[incoming_call_event("e-1", "ctx-1")], headers=WEBHOOK
            )
            await acs.answer_seen.wait()
            await trio.sleep(0.05)
            async with trio.open_nursery() as sessions:
                sessions.start_soon(media_session, True)
                await trio.sleep(1)  # the old socket is up and stays open (no close seen)
                sessions.start_soon(media_session, False)
                await old_closed.wait()  # closed by us, well within the take-over deadline
                await trio.sleep(6)  # past every grace: the call is still up
                assert acs.hang_up_attempts == []
                [record] = plane.calls.values()
                assert record.media_sockets == 2
                hung_up = await http.post(
                    f"/api/callbacks/{acs.token_of(1)}",
                    json=[callback_event("CallDisconnected", "conn-1")],
                    headers={"Authorization": acs.signer.bearer()},
                )
                assert hung_up.status_code == 200
            await plane.wait_idle()
    sessions_seen = [e for e in model.seen if e["type"] == "session.update"]
    greetings = [e for e in model.seen if e["type"] == "response.create"]
    assert len(sessions_seen) >= 2  # the resumed call has its own model session
    assert len(greetings) == 1  # and is not greeted twice
    assert acs.hang_up_attempts == []
    stop.set()


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
