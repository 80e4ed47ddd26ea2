"""A small cluster on loopback: a real redis-server, N `acs-trio serve` processes, a load balancer.

- :class:`RedisServer` runs Debian's ``redis-server`` (``apt-get install redis-server``; ``.ci/run``
  installs it) on a free port, without persistence, and can be killed and restarted on that port.
- :class:`Instance` is one ``python -m acs_trio serve`` process; its stderr is kept for asserts.
- :class:`Balancer` is a TCP proxy that sends each new connection to the next backend in turn
  (round-robin per connection, like Azure's L4 balancers), skipping one that refuses connections,
  and records which backend got which first request line.
- :class:`FakeModel` is a realtime peer speaking the GA protocol: a greeting with its transcript,
  and the caller's words transcribed once audio arrived; it records every session's events.
- :class:`Call` plays ACS for one call through the balancer: IncomingCall (retried on 503 as Event
  Grid does), signed callbacks, and the media WebSocket with 20 ms frames.

ACS's REST service and its JWKS are the simulator's (:mod:`acs_trio.testing.acs`), over HTTPS.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
    wrap_client_stream,
)

from acs_trio.testing.acs import open_simulated_acs
from acs_trio.testing.acs.registry import SimCall
from acs_trio.testing.acs.simulated import SimulatedAcs
from acs_trio.testing.acs.wire import (
    AudioFrameEncoder,
    WallClock,
    audio_metadata,
    cloud_event,
    incoming_call_event,
)

LOOPBACK = "127.0.0.1"


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout_s: float) -> None:
    """Poll ``check`` (state in other processes: nothing to wait on) until true, or fail."""
    with trio.fail_after(timeout_s):
        while True:
            result = check()
            if result if isinstance(result, bool) else await result:
                return
            await trio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


# --- redis-server -------------------------------------------------------------------------------


class RedisServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server not found: `apt-get install -y redis-server` (.ci/run does)")
        self.process = await trio.lowlevel.open_process(
            [binary, "--port", str(self.port), "--bind", LOOPBACK, "--save", "", "--appendonly",
             "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        with trio.fail_after(10):
            while True:
                with contextlib.suppress(OSError):
                    stream = await trio.open_tcp_stream(LOOPBACK, self.port)
                    async with stream:
                        await stream.send_all(b"PING\r\n")
                        if (await stream.receive_some(64)).startswith(b"+PONG"):
                            return
                await trio.sleep(0.05)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        await self.process.wait()

    async def aclose(self) -> None:
        if self.process is not None and self.process.returncode is None:
            await self.kill()


# --- the load balancer --------------------------------------------------------------------------


@dataclass
class Balancer:
    """Round-robin per connection over ``backends`` (ports); ``routed`` = (backend, first line)."""

    backends: list[int]
    routed: list[tuple[int, str]] = field(default_factory=list)
    #: Backends taken out of rotation (a terminating replica: the platform stops routing to it).
    out: set[int] = field(default_factory=set)
    port: int = 0
    _next: int = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._proxy, listeners)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def landed(self, fragment: str) -> list[int]:
        """Which backends got connections whose first request line contains ``fragment``."""
        return [index for index, line in self.routed if fragment in line]

    async def _proxy(self, client: trio.SocketStream) -> None:
        async with client:
            backend, index = None, -1
            for _ in range(len(self.backends)):
                index = self._next % len(self.backends)
                self._next += 1
                if index in self.out:
                    continue
                try:
                    backend = await trio.open_tcp_stream(LOOPBACK, self.backends[index])
                    break
                except OSError:
                    continue  # down (stopped or killed): the balancer's health check skips it
            if backend is None:
                return
            async with backend:
                try:
                    first = await client.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                self.routed.append((index, first.split(b"\r\n", 1)[0].decode("latin-1")))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, backend, first, nursery.cancel_scope)
                    nursery.start_soon(self._pump, backend, client, b"", nursery.cancel_scope)

    @staticmethod
    async def _pump(
        source: trio.SocketStream, sink: trio.SocketStream, first: bytes, done: trio.CancelScope
    ) -> None:
        try:
            if first:
                await sink.send_all(first)
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()  # either side gone: close both, as an L4 balancer does


# --- the realtime model --------------------------------------------------------------------------

GREETING = "Hello, this is the agent. How can I help?"
CALLER_SAID = "I would like to book a table for two."


@dataclass
class Session:
    events: list[dict[str, Any]] = field(default_factory=list)

    def types(self) -> list[str]:
        return [event["type"] for event in self.events]


class FakeModel:
    """GA realtime peer: greeting (+ its transcript) on response.create; transcribes the caller."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://{LOOPBACK}:{self.port}/v1/realtime"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            ws_server = await nursery.start(serve_websocket, self._handler, LOOPBACK, 0, None)
            self.port = ws_server.port
            task_status.started()

    async def _handler(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        session = Session()
        self.sessions.append(session)
        appended = 0
        with contextlib.suppress(ConnectionClosed):
            while True:
                event = json.loads(await ws.get_message())
                session.events.append(event)
                if event["type"] == "session.update":  # confirmed as configured
                    await ws.send_message(json.dumps({
                        "type": "session.updated", "event_id": "ev_s", "session": event["session"],
                    }))  # fmt: skip
                elif event["type"] == "response.create":
                    for message in _spoken_response(GREETING):
                        await ws.send_message(json.dumps(message))
                elif event["type"] == "input_audio_buffer.append":
                    appended += 1
                    if appended == 10:
                        await ws.send_message(json.dumps({
                            "type": "conversation.item.input_audio_transcription.completed",
                            "event_id": "ev_t1", "item_id": "item_user_1", "content_index": 0,
                            "transcript": CALLER_SAID,
                        }))  # fmt: skip


def _spoken_response(transcript: str) -> list[dict[str, Any]]:
    ids = {"response_id": "resp_1", "item_id": "item_1", "output_index": 0, "content_index": 0}
    delta = base64.b64encode(b"\x10\x00" * 2400).decode()  # 100 ms of quiet PCM16 at 24 kHz
    return [
        {"type": "response.created", "event_id": "ev_1",
         "response": {"object": "realtime.response", "id": "resp_1", "status": "in_progress"}},
        {"type": "response.output_audio.delta", "event_id": "ev_2", "delta": delta, **ids},
        {"type": "response.output_audio.done", "event_id": "ev_3", **ids},
        {"type": "response.output_audio_transcript.done", "event_id": "ev_4",
         "transcript": transcript, **ids},
        {"type": "response.done", "event_id": "ev_5",
         "response": {"object": "realtime.response", "id": "resp_1", "status": "completed"}},
    ]  # fmt: skip


# --- server instances ---------------------------------------------------------------------------


@dataclass
class Instance:
    name: str
    port: int
    env: dict[str, str]
    args: list[str] = field(default_factory=list)
    process: trio.Process | None = None
    log: bytearray = field(default_factory=bytearray)
    exited: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def start(self, nursery: trio.Nursery) -> None:
        command = [sys.executable, "-m", "acs_trio", "serve", "--port", str(self.port), *self.args]
        self.process = await trio.lowlevel.open_process(
            command, env=self.env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
        nursery.start_soon(self._read_log)
        with trio.fail_after(30):
            while b"serving on" not in self.log:
                if self.exited.is_set():
                    raise AssertionError(f"{self.name} exited:\n{self.text()}")
                await trio.sleep(0.05)

    async def _read_log(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async with self.process.stderr:
            while chunk := await self.process.stderr.receive_some(65536):
                self.log += chunk
        await self.process.wait()
        self.exited.set()

    def text(self) -> str:
        return self.log.decode(errors="replace")

    def count(self, fragment: str) -> int:
        return self.text().count(fragment)

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, trust_env=False, timeout=5) as http:
            return await http.get(path)

    async def health(self) -> dict[str, Any]:
        body: dict[str, Any] = (await self.get("/healthz")).json()
        return body

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()


# --- one call, played as ACS --------------------------------------------------------------------


class Cluster:
    def __init__(
        self, sim: SimulatedAcs, redis: RedisServer, balancer: Balancer, model: FakeModel
    ) -> None:
        self.sim = sim
        self.redis = redis
        self.balancer = balancer
        self.model = model
        self.instances: list[Instance] = []
        self.clock = WallClock(trio.current_time())

    def env(self, name: str, **extra: str) -> dict[str, str]:
        model_vars = {"REALTIME_URL", "AZURE_OPENAI_ENDPOINT", "OPENAI_API_KEY", "REDIS_URL"}
        base = {k: v for k, v in os.environ.items() if k not in model_vars}
        return base | self.sim.server_env(self.balancer.url) | {
            "HOST": LOOPBACK,
            "REALTIME_URL": self.model.url,
            "REDIS_URL": self.redis.url,
            "INSTANCE_ID": name,
            "CALL_LEASE_S": "1.5",
            "SHUTDOWN_GRACE_S": "60",
            "LOG_LEVEL": "INFO",
            # Not what these tests are about: a loaded CI machine must not turn callers away.
            "MAX_LOOP_LAG_MS": "1000",
        } | extra  # fmt: skip

    async def wait_ready(self, *instances: Instance) -> None:
        for instance in instances:
            await eventually(lambda i=instance: _ready(i), 15)

    def call(self) -> Call:
        return Call(self)


async def _ready(instance: Instance) -> bool:
    return (await instance.get("/readyz")).status_code == 200


class Call:
    """One ACS call; every request is a new connection through the balancer."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        index = secrets.randbelow(10000)
        self.sim = SimCall(
            incoming_call_context=secrets.token_urlsafe(96),
            caller=f"+1425555{index:04d}",
            recipient="+18005550100",
        )
        cluster.sim.registry.add(self.sim)
        self.event_id = str(uuid.uuid4())
        self.received: list[str] = []
        self.close_code: int | None = None
        self.closed_at: float | None = None
        self.media_open = trio.Event()
        self._drop = trio.CancelScope()
        self.media_closed = trio.Event()

    @staticmethod
    def _client() -> httpx.AsyncClient:
        # No keep-alive: each request is its own connection, so the balancer spreads them.
        return httpx.AsyncClient(
            trust_env=False, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)
        )

    async def post_incoming(self) -> int:
        async with self._client() as http:
            url = f"{self.cluster.balancer.url}/api/incomingCall"
            response = await http.post(url, json=self.incoming_event(), headers=self.webhook)
        return response.status_code

    @property
    def webhook(self) -> dict[str, str]:
        """The Event Grid subscription's delivery property: the webhook secret."""
        return {"X-Incoming-Call-Secret": self.cluster.sim.incoming_call_secret}

    def incoming_event(self) -> list[dict[str, Any]]:
        return incoming_call_event(
            event_id=self.event_id,
            topic="/subscriptions/x/resourceGroups/g/providers/Microsoft.Communication/"
            "communicationServices/sim",
            caller=self.sim.caller,
            recipient=self.sim.recipient,
            incoming_call_context=self.sim.incoming_call_context,
            server_call_id=self.sim.server_call_id,
            correlation_id=self.sim.correlation_id,
            event_time=self.cluster.clock.event_grid(trio.current_time()),
        )

    async def ring(self, *, attempts: int = 6) -> list[int]:
        """Deliver IncomingCall as Event Grid does (again after a 503), wait for the answer."""
        statuses = []
        for _ in range(attempts):
            statuses.append(await self.post_incoming())
            if statuses[-1] == 200:
                break
            await trio.sleep(0.1)
        with trio.fail_after(10):
            await self.sim.answered.wait()
        return statuses

    async def callback(self, name: str) -> int:
        assert self.sim.answer is not None
        event = cloud_event(
            name,
            event_id=str(uuid.uuid4()),
            call_connection_id=self.sim.call_connection_id,
            server_call_id=self.sim.server_call_id,
            correlation_id=self.sim.correlation_id,
            time=self.cluster.clock.cloud_event(trio.current_time()),
        )
        token = self.cluster.sim.signer.sign(300)
        async with self._client() as http:
            response = await http.post(
                self.sim.answer.callback_uri,
                json=[event],
                headers={"Authorization": f"Bearer {token}"},
            )
        return response.status_code

    async def media(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The media WebSocket: metadata, then a 20 ms frame of quiet speech on a fixed beat.

        ``nursery.start(call.media)`` returns once the socket is open (the handshake accepted).
        """
        assert self.sim.answer is not None
        self.media_open, self.media_closed = trio.Event(), trio.Event()
        self.close_code = None
        headers = [
            (b"Authorization", f"Bearer {self.cluster.sim.signer.sign(3600)}".encode()),
            (b"x-ms-call-connection-id", self.sim.call_connection_id.encode()),
            (b"x-ms-call-correlation-id", self.sim.correlation_id.encode()),
        ]
        url = urlsplit(self.sim.answer.transport_url)
        assert url.hostname is not None and url.port is not None
        self._drop = trio.CancelScope()
        try:
            # Our own TCP stream: trio-websocket 0.12's client leaves its socket open when the
            # server closes first (see tests/control/test_server_e2e.py).
            with self._drop:
                await self._stream(url.hostname, url.port, url.path, headers, task_status)
        finally:
            self.closed_at = trio.current_time()
            self.media_closed.set()

    def drop(self) -> None:
        """The network drops the media socket: TCP closed, no WebSocket close frame."""
        self._drop.cancel()

    async def _stream(
        self,
        host: str,
        port: int,
        path: str,
        headers: list[tuple[bytes, bytes]],
        task_status: trio.TaskStatus[None],
    ) -> None:
        encoder = AudioFrameEncoder(f"4:{self.sim.caller}")
        tail = encoder.tail(b"\x20\x00" * 480, silent=False)
        async with (
            await trio.open_tcp_stream(host, port) as stream,
            trio.open_nursery() as ws_nursery,
        ):
            ws = await wrap_client_stream(
                ws_nursery, stream, f"{host}:{port}", path, extra_headers=headers
            )
            await ws.send_message(
                audio_metadata(subscription_id=self.sim.subscription_id, sample_rate=24000)
            )
            self.media_open.set()
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive, ws, nursery.cancel_scope)
                nursery.start_soon(self._send, ws, encoder, tail, nursery.cancel_scope)
            reason = ws.closed
            self.close_code = reason.code if reason is not None else None
            await ws.aclose()

    async def _receive(self, ws: WebSocketConnection, done: trio.CancelScope) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                self.received.append(str(await ws.get_message()))
        done.cancel()

    async def _send(
        self, ws: WebSocketConnection, encoder: AudioFrameEncoder, tail: str, done: trio.CancelScope
    ) -> None:
        with contextlib.suppress(ConnectionClosed):
            beat = trio.current_time()
            while True:
                await ws.send_message(encoder.message(self.cluster.clock.audio(beat), tail))
                beat += 0.02
                await trio.sleep_until(beat)
        done.cancel()


@contextlib.asynccontextmanager
async def open_cluster(nursery: trio.Nursery) -> AsyncIterator[Cluster]:
    redis = RedisServer(free_port())
    await redis.start()
    model = FakeModel()
    await nursery.start(model.serve)
    balancer = Balancer([])
    await nursery.start(balancer.serve)
    try:
        async with open_simulated_acs() as sim:
            yield Cluster(sim, redis, balancer, model)
    finally:
        await redis.aclose()


async def start_instances(
    cluster: Cluster, nursery: trio.Nursery, count: int, **extra: str
) -> list[Instance]:
    instances = [
        Instance(f"i{n}", free_port(), cluster.env(f"i{n}", **extra)) for n in range(count)
    ]
    cluster.balancer.backends[:] = [instance.port for instance in instances]
    async with trio.open_nursery() as starting:
        for instance in instances:
            starting.start_soon(instance.start, nursery)
    cluster.instances = instances
    await cluster.wait_ready(*instances)
    return instances
