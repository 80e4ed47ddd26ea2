"""In-process peers for call tests: a fake ACS and a fake realtime model.

Both speak the real wire formats (docs/protocols/acs.md §4.2/§4.4, docs/protocols/realtime.md §2/§3) over real
trio-websocket connections whose transport is an in-memory stream pair, so a whole call runs under
``autojump_clock`` with exact virtual times and no sockets.  Each peer records what it saw, with
the virtual time, for the test to assert on.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    WebSocketConnection,
    wrap_client_stream,
    wrap_server_stream,
)

from acs_trio.control.model_ws import WebsocketModelSocket
from acs_trio.errors import MediaClosed

FRAME_MS = 20


def pcm_tone(ms: int, value: int = 1000, rate: int = 24000) -> bytes:
    """Constant-valued PCM16 (easy to recognise on the other side), ``ms`` long."""
    return int(value).to_bytes(2, "little", signed=True) * (rate * ms // 1000)


class FreezableStream(trio.abc.Stream):
    """A stream that can go half-open: once frozen it reads nothing and its writes vanish, as
    when a NAT or load balancer silently drops a connection."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.frozen = False
        self._thawed = trio.Event()

    def freeze(self) -> None:
        self.frozen = True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.frozen:
            await trio.lowlevel.checkpoint()
            return
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.frozen:
            await self._thawed.wait()  # never set: the peer is gone
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def open_ws_pair(
    nursery: trio.Nursery,
    *,
    server_nursery: trio.Nursery | None = None,
    lockstep: bool = False,
    max_message_size: int = 2**20,
    wrap_server: Callable[[trio.abc.Stream], trio.abc.Stream] | None = None,
) -> tuple[WebSocketConnection, WebSocketConnection]:
    """A connected (client, server) trio-websocket pair over memory streams.

    The client's background reader runs in ``nursery``, the server's in ``server_nursery`` (default:
    the same), so a remote peer can outlive the scope its client is cancelled in.
    ``lockstep=True`` uses a stream with no buffer, so a peer that stops reading applies real
    back-pressure to the writer, as TCP eventually does.
    """
    server_nursery = server_nursery or nursery
    make = trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
    client_stream, server_stream = make()
    if wrap_server is not None:
        server_stream = wrap_server(server_stream)
    hand_over, handed = trio.open_memory_channel[WebSocketConnection](1)

    async def server_side() -> None:
        request = await wrap_server_stream(
            server_nursery, server_stream, max_message_size=max_message_size
        )
        await hand_over.send(await request.accept())

    server_nursery.start_soon(server_side)
    client = await wrap_client_stream(
        nursery, client_stream, "peer.test", "/", max_message_size=max_message_size
    )
    return client, await handed.receive()


class TrioMediaSocket:
    """The MediaSocket protocol over a trio-websocket server connection (our side of ACS)."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws

    async def receive(self) -> str | bytes:
        try:
            message: str | bytes = await self.ws.get_message()
        except ConnectionClosed as exc:
            raise MediaClosed("ACS closed the media socket", code=exc.reason.code) from None
        return message

    async def send(self, message: str) -> None:
        try:
            await self.ws.send_message(message)
        except ConnectionClosed as exc:
            raise MediaClosed("media socket closed", code=exc.reason.code) from None

    async def close(self, code: int, reason: str) -> None:
        await self.ws.aclose(code, reason)


@dataclass
class Seen:
    """Messages one peer received, with the virtual time of arrival, and how its socket closed."""

    messages: list[tuple[float, Any]] = field(default_factory=list)
    closed: CloseReason | None = None
    closed_at: float | None = None
    #: FakeModel: the ``call_id`` of every function_call item in this session's conversation.
    call_ids: set[str] = field(default_factory=set)
    #: FakeModel: ``function_call_output`` events it refused (their call_id was unknown).
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def of(self, predicate: Callable[[Any], bool]) -> list[tuple[float, Any]]:
        return [(t, m) for t, m in self.messages if predicate(m)]


async def record(ws: WebSocketConnection, seen: Seen) -> None:
    """Receive until the socket closes; JSON text is decoded, anything else kept raw."""
    while True:
        try:
            raw = await ws.get_message()
        except ConnectionClosed as exc:
            seen.closed, seen.closed_at = exc.reason, trio.current_time()
            return
        try:
            message = json.loads(raw)
        except ValueError:
            message = raw
        seen.messages.append((trio.current_time(), message))


class FakeAcs:
    """The ACS side of the media socket: streams caller frames, records what the server sends."""

    def __init__(self, ws: WebSocketConnection, rate: int = 24000) -> None:
        self.ws = ws
        self.rate = rate
        self.seen = Seen()

    @property
    def frame_bytes(self) -> int:
        return self.rate * 2 * FRAME_MS // 1000

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.ws.send_message(json.dumps(message))

    async def send_metadata(self) -> None:
        await self.send_json(
            {
                "kind": "AudioMetadata",
                "audioMetadata": {
                    "subscriptionId": "89e8cb59-b991-48b0-b154-1db84f16a077",
                    "encoding": "PCM",
                    "sampleRate": self.rate,
                    "channels": 1,
                    "length": self.frame_bytes,
                },
            }
        )

    async def send_frame(self, pcm: bytes, *, silent: bool = False) -> None:
        await self.send_json(
            {
                "kind": "AudioData",
                "audioData": {
                    "timestamp": "2024-11-15T19:16:12.925Z",
                    "participantRawID": "4:+14255550123",
                    "data": base64.b64encode(pcm).decode(),
                    "silent": silent,
                },
            }
        )

    async def stream(self, ms: int, *, value: int = 1000, silent: bool = False) -> None:
        """Stream ``ms`` of audio as real-time 20 ms frames (absolute deadlines, no drift).

        Stops quietly when the server closes the socket, as ACS does.
        """
        start = trio.current_time()
        frame = b"\x00" * self.frame_bytes if silent else pcm_tone(FRAME_MS, value, self.rate)
        for n in range(ms // FRAME_MS):
            await trio.sleep_until(start + n * FRAME_MS / 1000)
            try:
                await self.send_frame(frame, silent=silent)
            except ConnectionClosed:
                return

    async def send_dtmf(self, tone: str) -> None:
        """One keypad tone as ACS sends it (docs/protocols/acs.md §4.2)."""
        await self.send_json({"kind": "DtmfData", "dtmfData": {"data": tone}})

    def audio_out(self) -> list[tuple[float, bytes]]:
        """Agent audio frames received: (time, pcm), in the documented outbound shape only."""
        return [
            (t, base64.b64decode(m["AudioData"]["Data"]))
            for t, m in self.seen.messages
            if isinstance(m, dict) and m.get("Kind") == "AudioData"
        ]

    def stop_audio_times(self) -> list[float]:
        return [
            t for t, m in self.seen.messages if isinstance(m, dict) and m.get("Kind") == "StopAudio"
        ]


class FakeModel:
    """A scripted realtime model: records client events; the test sends its server events.

    Like the service it opens each connection with ``session.created`` (with ``expires_at``
    when ``session_lifetime_s`` is set) and answers ``session.update`` with ``session.updated``
    echoing the configuration, or with an ``error`` naming its ``event_id`` when
    ``reject_session_update`` is set.  Every connection is kept in ``connections``; ``seen`` and
    ``ws`` are the latest one's.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        lockstep: bool = False,
        max_message_size: int = 2**20,
        session_lifetime_s: float | None = None,
        wall_clock: Callable[[], float] | None = None,
        connect_delay_s: float = 0.0,
    ) -> None:
        self.nursery = nursery  # where the "remote" model runs: outside the call's task tree
        self.lockstep = lockstep
        self.max_message_size = max_message_size
        self.session_lifetime_s = session_lifetime_s
        self.wall_clock = wall_clock
        self.connect_delay_s = connect_delay_s
        self.connections: list[Seen] = []
        self.connected_at: list[float] = []
        self.streams: list[FreezableStream] = []
        self.connected = trio.Event()
        self.new_connection = trio.Event()
        self.ws: WebSocketConnection | None = None
        self.reading = True
        self.answer_session_update = True
        self.reject_session_update = False
        #: Refuse the next handshakes with these (HTTP status, Retry-After s), then accept.
        self.refuse_with: list[tuple[int, float | None]] = []
        self._resume = trio.Event()
        self._arrived = trio.Event()
        self._ids = 0

    async def wait_for(self, type_: str) -> dict[str, Any]:
        """The first client event of this type on the latest connection, once it has arrived."""
        while not self.events(type_):
            await self._arrived.wait()
        return self.events(type_)[0]

    @property
    def seen(self) -> Seen:
        return self.connections[-1] if self.connections else Seen()

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[WebsocketModelSocket]:
        """A ModelConnector: one in-memory socket to this fake per call, seen through the
        production adapter (so ModelClosed translation is what the calls under test get)."""
        from acs_trio.errors import ModelRejected

        await trio.sleep(self.connect_delay_s)  # DNS + TCP + TLS + HTTP upgrade
        if self.refuse_with:
            status, retry_after = self.refuse_with.pop(0)
            raise ModelRejected(f"HTTP {status}", status_code=status, retry_after_s=retry_after)
        async with trio.open_nursery() as nursery:

            def wrap(stream: trio.abc.Stream) -> trio.abc.Stream:
                freezable = FreezableStream(stream)
                self.streams.append(freezable)
                return freezable

            client, server = await open_ws_pair(
                nursery,
                server_nursery=self.nursery,
                lockstep=self.lockstep,
                max_message_size=self.max_message_size,
                wrap_server=wrap,
            )
            self.ws = server
            seen = Seen()
            self.connections.append(seen)
            self.connected_at.append(trio.current_time())
            await self.send(self._session_created())
            self.nursery.start_soon(self._record, server, seen)
            self.connected.set()
            self.new_connection.set()
            self.new_connection = trio.Event()
            try:
                yield WebsocketModelSocket(client)
            finally:
                nursery.cancel_scope.cancel()

    def _session_created(self) -> dict[str, Any]:
        session: dict[str, Any] = {"object": "realtime.session", "type": "realtime"}
        if self.session_lifetime_s is not None:
            assert self.wall_clock is not None
            session["expires_at"] = int(self.wall_clock() + self.session_lifetime_s)
        return {"type": "session.created", "event_id": self.next_id("event"), "session": session}

    async def _record(self, ws: WebSocketConnection, seen: Seen) -> None:
        while True:
            if not self.reading:
                await self._resume.wait()
            try:
                raw = await ws.get_message()
            except ConnectionClosed as exc:
                seen.closed, seen.closed_at = exc.reason, trio.current_time()
                return
            message = json.loads(raw)
            seen.messages.append((trio.current_time(), message))
            self._arrived.set()
            self._arrived = trio.Event()
            if message.get("type") == "session.update" and self.answer_session_update:
                with contextlib.suppress(ConnectionClosed):
                    await ws.send_message(json.dumps(self._session_updated(message)))
            elif message.get("type") == "conversation.item.create":
                with contextlib.suppress(ConnectionClosed):
                    await self._item_create(ws, seen, message)

    async def _item_create(
        self, ws: WebSocketConnection, seen: Seen, message: dict[str, Any]
    ) -> None:
        """Like the service: a ``function_call_output`` is accepted only if a ``function_call``
        item with its ``call_id`` is in this session's conversation; else a non-fatal error
        ``invalid_tool_call_id`` (docs/protocols/realtime.md §2.4)."""
        item = message.get("item") or {}
        if item.get("type") == "function_call":
            seen.call_ids.add(item["call_id"])
        elif item.get("type") == "function_call_output" and item["call_id"] not in seen.call_ids:
            seen.rejected.append(message)
            error = {
                "type": "invalid_request_error",
                "code": "invalid_tool_call_id",
                "message": f"Tool call ID '{item['call_id']}' not found in conversation.",
                "param": None,
                "event_id": message.get("event_id"),
            }
            await ws.send_message(
                json.dumps({"type": "error", "event_id": self.next_id("event"), "error": error})
            )

    def _session_updated(self, update: dict[str, Any]) -> dict[str, Any]:
        if self.reject_session_update:
            return {
                "type": "error",
                "event_id": self.next_id("event"),
                "error": {
                    "type": "invalid_request_error",
                    "code": "invalid_value",
                    "message": "Invalid value: 'nope'. Supported values are: 'alloy', ...",
                    "param": "session.audio.output.voice",
                    "event_id": update.get("event_id"),
                },
            }
        return {
            "type": "session.updated",
            "event_id": self.next_id("event"),
            "session": {"object": "realtime.session", **update["session"]},
        }

    def freeze(self) -> None:
        """The link goes half-open: this end neither reads nor writes any more (no pongs)."""
        self.streams[-1].freeze()

    def stop_reading(self) -> None:
        self.reading = False
        self._resume = trio.Event()

    def resume_reading(self) -> None:
        self.reading = True
        self._resume.set()

    def events(self, type_: str) -> list[dict[str, Any]]:
        return [m for _, m in self.seen.messages if m.get("type") == type_]

    def appended_pcm(self) -> bytes:
        return b"".join(
            base64.b64decode(e["audio"]) for e in self.events("input_audio_buffer.append")
        )

    def next_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}_{self._ids:04d}"

    async def send(self, event: dict[str, Any] | str | bytes) -> None:
        assert self.ws is not None
        if isinstance(event, dict):  # a function call the model makes joins its conversation
            item = event.get("item") or {}
            if item.get("type") == "function_call":
                self.seen.call_ids.add(item["call_id"])
            elif event.get("type") == "response.function_call_arguments.done":
                self.seen.call_ids.add(event["call_id"])
        await self.ws.send_message(event if isinstance(event, str | bytes) else json.dumps(event))

    async def speech_started(self, item_id: str = "item_user", audio_start_ms: int = 0) -> None:
        await self.send(
            {
                "type": "input_audio_buffer.speech_started",
                "event_id": self.next_id("event"),
                "item_id": item_id,
                "audio_start_ms": audio_start_ms,
            }
        )

    async def speech_stopped(self, item_id: str = "item_user", audio_end_ms: int = 0) -> None:
        await self.send(
            {
                "type": "input_audio_buffer.speech_stopped",
                "event_id": self.next_id("event"),
                "item_id": item_id,
                "audio_end_ms": audio_end_ms,
            }
        )

    async def start_response(self) -> tuple[str, str]:
        response_id, item_id = self.next_id("resp"), self.next_id("item")
        await self.send(
            {
                "type": "response.created",
                "event_id": self.next_id("event"),
                "response": {
                    "object": "realtime.response",
                    "id": response_id,
                    "status": "in_progress",
                },
            }
        )
        return response_id, item_id

    async def audio_delta(self, response_id: str, item_id: str, pcm: bytes) -> None:
        await self.send(
            {
                "type": "response.output_audio.delta",
                "event_id": self.next_id("event"),
                "response_id": response_id,
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "delta": base64.b64encode(pcm).decode(),
            }
        )

    async def finish_response(
        self, response_id: str, item_id: str, status: str = "completed"
    ) -> None:
        common = {
            "response_id": response_id,
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
        }
        await self.send(
            {"type": "response.output_audio.done", "event_id": self.next_id("event"), **common}
        )
        await self.send(
            {
                "type": "response.done",
                "event_id": self.next_id("event"),
                "response": {"object": "realtime.response", "id": response_id, "status": status},
            }
        )

    async def speak(self, ms: int, *, value: int = 2000, chunk_ms: int = 100) -> tuple[str, str]:
        """A whole response of ``ms`` of audio, sent as a burst (faster than real time)."""
        response_id, item_id = await self.start_response()
        for _ in range(ms // chunk_ms):
            await self.audio_delta(response_id, item_id, pcm_tone(chunk_ms, value))
        await self.finish_response(response_id, item_id)
        return response_id, item_id

    async def output_item_added(self, response_id: str, item_id: str) -> None:
        await self.send(
            {
                "type": "response.output_item.added",
                "event_id": self.next_id("event"),
                "response_id": response_id,
                "output_index": 0,
                "item": {
                    "id": item_id,
                    "object": "realtime.item",
                    "type": "message",
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                },
            }
        )

    async def transcript_delta(self, response_id: str, item_id: str, text: str) -> None:
        await self.send(
            {
                "type": "response.output_audio_transcript.delta",
                "event_id": self.next_id("event"),
                "response_id": response_id,
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "delta": text,
            }
        )

    async def caller_transcript(self, item_id: str, text: str) -> None:
        await self.send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "event_id": self.next_id("event"),
                "item_id": item_id,
                "content_index": 0,
                "transcript": text,
            }
        )

    async def response_done(
        self, response_id: str, status: str, details: dict[str, Any] | None = None
    ) -> None:
        await self.send(
            {
                "type": "response.done",
                "event_id": self.next_id("event"),
                "response": {
                    "object": "realtime.response",
                    "id": response_id,
                    "status": status,
                    "status_details": details,
                },
            }
        )

    async def function_call(
        self, response_id: str, name: str, arguments: str, *, call_id: str | None = None
    ) -> str:
        """A function call item of ``response_id`` as GA sends it (docs/protocols/realtime.md §3.2):
        ``function_call_arguments.done`` and then the item in ``response.output_item.done``."""
        call_id = call_id or self.next_id("call")
        item_id = self.next_id("item")
        await self.send(
            {
                "type": "response.function_call_arguments.done",
                "event_id": self.next_id("event"),
                "response_id": response_id,
                "item_id": item_id,
                "output_index": 0,
                "call_id": call_id,
                "name": name,
                "arguments": arguments,
            }
        )
        await self.send(
            {
                "type": "response.output_item.done",
                "event_id": self.next_id("event"),
                "response_id": response_id,
                "output_index": 0,
                "item": {
                    "object": "realtime.item",
                    "id": item_id,
                    "type": "function_call",
                    "status": "completed",
                    "name": name,
                    "call_id": call_id,
                    "arguments": arguments,
                },
            }
        )
        return call_id

    async def call_tools(self, *calls: tuple[str, str]) -> list[str]:
        """One response that only calls functions ``(name, arguments)``; returns the call ids."""
        response_id, _ = await self.start_response()
        ids = [await self.function_call(response_id, name, args) for name, args in calls]
        await self.response_done(response_id, "completed")
        return ids

    def outputs(self) -> dict[str, dict[str, Any]]:
        """``function_call_output`` items sent by the bridge, by call id, output decoded."""
        return {
            m["item"]["call_id"]: json.loads(m["item"]["output"])
            for m in self.events("conversation.item.create")
            if m["item"]["type"] == "function_call_output"
        }

    def tool_traffic(self) -> list[tuple[float, str]]:
        """Function outputs, user items and response.create/cancel with their times, in order."""
        kinds = {"conversation.item.create", "response.create", "response.cancel"}
        out = []
        for t, m in self.seen.messages:
            if m.get("type") not in kinds:
                continue
            item = m.get("item") or {}
            label = m["type"]
            if item.get("type") == "function_call_output":
                label = f"output:{item['call_id']}"
            elif item.get("type") == "message":
                label = f"{item['role']}_text:{item['content'][0]['text']}"
            out.append((t, label))
        return out
