"""Simulated ACS calls on asyncio + picows: Event Grid IncomingCall, callbacks, the media socket.

One :class:`Call` is one phone call as ACS would drive it (docs/protocols/acs.md §0–§5): POST the Event
Grid ``IncomingCall`` (§1.3), learn the per-call callback and transport URLs from the answer the
server sends to the fake REST endpoint, POST ``CallConnected`` (§3) with a signed JWT (§5.1), open
the media WebSocket with ``Authorization: Bearer``, ``x-ms-call-connection-id`` and
``x-ms-call-correlation-id`` (§4.1, §5.2), send ``AudioMetadata`` then 50 ``AudioData`` frames a
second (§4.2, §4.3, 24 kHz, 960 bytes), and at the end hang up: close the socket with 1000 and POST
``CallDisconnected``.  All calls' frames come from one :class:`FrameClock` (1 ms ticks, each call
on its own phase), so the generator needs one timer wake-up per millisecond, not one per frame.

On the way back it reads the marker of every 20 ms frame in each outbound ``AudioData`` (§4.4) and
times every frame (pacing shown apart from the bridge's own delay, see :meth:`Call.on_audio`),
time-to-first-audio from ``speech_stopped``, the barge-in latency (``speech_started`` sent by the
model → ``StopAudio`` here), playout underruns and frames that leak after ``StopAudio``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import uuid
from typing import TYPE_CHECKING, Any

import aiohttp
from bwire import (
    FRAME_B64,
    FRAME_BYTES,
    MARK_B64,
    MARK_BYTES,
    Script,
    build_script,
    caller_marker_b64,
    noise_tail_b64,
    read_delta_marker,
)
from metrics import Sink, now_ns
from picows import WSCloseCode, WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from acs_trio.testing.acs.wire import (
    audio_metadata,
    cloud_event,
    incoming_call_event,
    phone_identifier,
)

if TYPE_CHECKING:
    from fake_model import ModelSocket

FRAME_NS = 20_000_000
_AUDIO_HEAD = '{"kind": "AudioData", "audioData": {"timestamp": "'
_SPEECH_TAIL = noise_tail_b64(FRAME_BYTES - MARK_BYTES, seed=3)
_SILENCE_TAIL = "A" * len(_SPEECH_TAIL)  # base64 of zero bytes


class Generator:
    """Everything the calls share: HTTP session, JWT signer, frame clock, registries, the sink."""

    def __init__(
        self, sink: Sink, signer: Any, server_url: str, *, script_kw: dict[str, int] | None = None
    ) -> None:
        self.sink = sink
        self.signer = signer
        self.server_url = server_url.rstrip("/")
        self.calls: dict[int, Call] = {}
        self.by_context: dict[str, Call] = {}
        self.by_connection: dict[str, Call] = {}
        self.clock = FrameClock(sink)
        self.script_kw = script_kw or {}
        #: The servers' PLAYOUT_LEAD_MS (the pacing schedule hop_out leaves out).
        self.lead_ms = 100
        self.next_id = 1
        self.http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Generator:
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=15)
        )
        self.clock.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.clock.stop()
        if self.http is not None:
            await self.http.close()

    def new_call(self, duration_s: float, server: str | None = None) -> Call:
        """A call against the server (URL) the generator was made for, or ``server``."""
        call = Call(self, self.next_id, max(1, int(duration_s * 50)), server or self.server_url)
        self.next_id += 1
        return call


class FrameClock:
    """Sends every live call's next frame on its own 20 ms phase from a single 1 ms ticker."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.buckets: list[list[Call]] = [[] for _ in range(20)]
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def add(self, call: Call) -> None:
        self.buckets[call.call_id % 20].append(call)

    def remove(self, call: Call) -> None:
        with contextlib.suppress(ValueError):
            self.buckets[call.call_id % 20].remove(call)

    async def run(self) -> None:
        t0 = now_ns()
        tick = 0
        worst = 0
        while True:
            deadline = t0 + tick * 1_000_000
            now = now_ns()
            if now < deadline:
                await asyncio.sleep((deadline - now) / 1e9)
                continue
            worst = max(worst, now - deadline)
            bucket = self.buckets[tick % 20]
            if bucket:
                stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
                for call in tuple(bucket):
                    call.tick(stamp)
            tick += 1
            if tick % 1000 == 0:  # once a second: the worst lateness of the frame clock
                self.sink.gen_lag.add(now, worst / 1e6)
                worst = 0


class Call:
    def __init__(self, gen: Generator, call_id: int, frames: int, server_url: str) -> None:
        self.gen = gen
        self.server_url = server_url.rstrip("/")
        self.sink = gen.sink
        self.call_id = call_id
        self.script: Script = build_script(call_id, frames, **gen.script_kw)
        self.context = f"bench-ctx-{uuid.uuid4()}"
        self.connection_id = f"bench-conn-{call_id}-{uuid.uuid4().hex[:8]}"
        self.server_call_id = f"bench-scid-{uuid.uuid4().hex}"
        self.correlation_id = str(uuid.uuid4())
        self.subscription_id = str(uuid.uuid4())
        self.caller_number = f"+1425555{call_id % 10000:04d}"
        self.caller_identifier = phone_identifier(self.caller_number)
        self.callback_uri = ""
        self.transport_url = ""
        self._answered = asyncio.Event()
        self._finished = asyncio.Event()
        self._model_closed = asyncio.Event()
        self.ws: WSTransport | None = None
        self.seq = 0
        self.hangup_ns: int | None = None
        self.model_closed_ns: int | None = None
        self.failed: str | None = None
        self.model_socket: ModelSocket | None = None
        # Model side writes these (same process), media side reads them.
        self.answer_stopped: dict[int, int] = {}
        self.barge_sent: list[int] = []
        self.barges_matched = 0
        self.first_frames: set[int] = set()
        self.cur_resp = -1
        self.cut_resp = -2
        self.resp_start = 0
        self.resp_ms: dict[int, int] = {}  # agent audio received per response, ms
        self.heard_at_stop: dict[int, float] = {}  # ms of the response heard when StopAudio came
        self.lead_ns = gen.lead_ms * 1_000_000
        self.play_end = 0
        self.frames_out = 0
        self.tasks: set[asyncio.Task[Any]] = set()

    # --- life ----------------------------------------------------------------------------------

    async def run(self) -> bool:
        """One whole call; True when it ended as scripted (no failure)."""
        gen, sink = self.gen, self.sink
        gen.calls[self.call_id] = self
        gen.by_context[self.context] = self
        sink.calls_started += 1
        started = now_ns()
        try:
            if not await self.incoming_call():
                return False
            try:
                await asyncio.wait_for(self._answered.wait(), 10)
            except TimeoutError:
                self.fail("not_answered_in_10s")
                return False
            gen.by_connection[self.connection_id] = self
            self.spawn(self.callback("CallConnected"))
            headers = {
                "Authorization": f"Bearer {gen.signer.sign(24 * 3600)}",
                "x-ms-call-connection-id": self.connection_id,
                "x-ms-call-correlation-id": self.correlation_id,
            }
            try:
                self.ws, _ = await ws_connect(
                    lambda: MediaSocket(self),
                    self.transport_url,
                    extra_headers=headers,
                    websocket_handshake_timeout=10,
                )
            except (WSError, OSError, TimeoutError) as exc:
                self.fail(f"media_connect_failed:{type(exc).__name__}")
                return False
            sink.setup.add(now_ns(), (now_ns() - started) / 1e6)
            self.ws.send(
                WSMsgType.TEXT,
                audio_metadata(subscription_id=self.subscription_id, sample_rate=24000).encode(),
            )
            gen.clock.add(self)
            await self._finished.wait()
            if self.failed is None:
                try:
                    await asyncio.wait_for(self._model_closed.wait(), 5)
                except TimeoutError:
                    self.fail("model_socket_open_5s_after_hang_up")
            if self.failed is None:
                self.final_checks()
            return self.failed is None
        finally:
            gen.clock.remove(self)
            if self.ws is not None and not self.ws.is_disconnected:
                self.ws.disconnect()
            for task in list(self.tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, 5)
            gen.calls.pop(self.call_id, None)
            gen.by_context.pop(self.context, None)
            gen.by_connection.pop(self.connection_id, None)
            sink.calls_done += 1
            if self.failed is not None:
                sink.calls_failed += 1

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def fail(self, reason: str) -> None:
        if self.failed is None:
            self.failed = reason
            self.sink.failures.add(reason)
            if self.ws is not None and self.hangup_ns is None:
                self.ws.send_close(WSCloseCode.OK)
                self.ws.disconnect()
            self._finished.set()

    def final_checks(self) -> None:
        socket = self.model_socket
        if socket is None:
            self.fail("model_never_saw_this_call")
            return
        missing = [n for n in range(socket.responses) if n not in self.first_frames]
        if missing:
            self.fail("answer_audio_missing")
        for _ in range(self.barges_matched, len(self.barge_sent)):
            self.sink.events.add("barge_in_without_stop_audio")

    async def incoming_call(self) -> bool:
        assert self.gen.http is not None
        body = incoming_call_event(
            event_id=str(uuid.uuid4()),
            topic="/subscriptions/bench/resourceGroups/bench/providers/Microsoft.Communication/communicationServices/bench",
            caller=self.caller_number,
            recipient="+18005550100",
            incoming_call_context=self.context,
            server_call_id=self.server_call_id,
            correlation_id=self.correlation_id,
            event_time=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        )
        try:
            async with self.gen.http.post(
                f"{self.server_url}/api/incomingCall",
                json=body,
                headers={"aeg-event-type": "Notification"},
            ) as response:
                await response.read()
                if response.status != 200:
                    self.fail(f"incoming_call_http_{response.status}")
                    return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.fail(f"incoming_call_{type(exc).__name__}")
            return False
        return True

    async def callback(self, name: str) -> None:
        assert self.gen.http is not None
        event = cloud_event(
            name,
            event_id=str(uuid.uuid4()),
            call_connection_id=self.connection_id,
            server_call_id=self.server_call_id,
            correlation_id=self.correlation_id,
            time=dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
        )
        headers = {"Authorization": f"Bearer {self.gen.signer.sign(300)}"}
        try:
            async with self.gen.http.post(
                self.callback_uri, json=[event], headers=headers
            ) as response:
                await response.read()
                if response.status != 200:
                    self.sink.events.add(f"callback_{name}_http_{response.status}")
        except (aiohttp.ClientError, TimeoutError):
            self.sink.events.add(f"callback_{name}_failed")

    # --- called by the fake REST endpoint and the model peer -----------------------------------

    def answered(self, callback_uri: str, transport_url: str, media: dict[str, Any]) -> None:
        self.callback_uri, self.transport_url = callback_uri, transport_url
        if media.get("audioFormat") != "pcm24KMono" or media.get("enableBidirectional") is not True:
            self.sink.events.add("answer_media_options_unexpected")
        self._answered.set()

    def server_hung_up(self, t_ns: int) -> None:
        if self.hangup_ns is None:
            self.fail("server_hung_up_the_call")

    def model_closed(self, t_ns: int) -> None:
        self.model_closed_ns = t_ns
        if self.hangup_ns is None:
            self.fail("model_socket_closed_before_hang_up")
        else:
            self.sink.teardown.add(self.hangup_ns, (t_ns - self.hangup_ns) / 1e6)
        self._model_closed.set()

    # --- media ---------------------------------------------------------------------------------

    def tick(self, stamp: str) -> None:
        ws = self.ws
        if ws is None or self.hangup_ns is not None:
            return
        seq = self.seq
        if seq >= self.script.end_seq:
            self.hang_up()
            return
        self.seq = seq + 1
        tail = _SPEECH_TAIL if self.script.speaking(seq) else _SILENCE_TAIL
        marker = caller_marker_b64(self.call_id, seq, now_ns())
        ws.send(
            WSMsgType.TEXT,
            (
                f'{_AUDIO_HEAD}{stamp}", "participantRawID": "4:{self.caller_number}", "data": "{marker}{tail}", '
                f'"silent": {"false" if tail is _SPEECH_TAIL else "true"}}}}}'
            ).encode(),
        )

    def hang_up(self) -> None:
        """The caller hangs up: ACS closes the media socket (1000) and sends CallDisconnected."""
        if self.hangup_ns is not None or self.ws is None:
            return
        self.hangup_ns = now_ns()
        self.gen.clock.remove(self)
        self.ws.send_close(WSCloseCode.OK)
        loop = asyncio.get_running_loop()
        loop.call_later(2.0, self._force_disconnect)
        self.spawn(self.callback("CallDisconnected"))
        self._finished.set()

    def request_hang_up(self) -> None:
        self.script.end_seq = min(self.script.end_seq, self.seq)

    def _force_disconnect(self) -> None:
        if self.ws is not None and not self.ws.is_disconnected:
            self.ws.disconnect()

    def on_audio(self, data: bytes, t: int) -> None:
        """One outbound AudioData (its base64): time every 20 ms frame in it.

        Per frame: ``out_total`` = delta sent by the model → here (what the caller gets, pacing
        included); ``out_pacing`` = the part of that the bridge's pacing holds back on purpose
        (the frame's release time in a real-time schedule started by the response's first
        frame, minus the playout lead, minus its send time, if positive); ``hop_out`` = the rest,
        the bridge's own delay.  A message's frames are released together when its first frame is
        due, so the schedule uses the message's first frame.
        """
        self.frames_out += 1
        sink = self.sink
        msg_frame = -1
        for at in range(0, max(len(data) - MARK_B64 + 1, 1), FRAME_B64):
            marker = read_delta_marker(data[at : at + MARK_B64])
            if marker is None:
                continue
            _, resp, frame, sent = marker
            self.cur_resp = resp
            self.resp_ms[resp] = self.resp_ms.get(resp, 0) + 20
            if frame == 0:
                self.resp_start = t
                self.first_frames.add(resp)
                sink.hop_out_first.add(t, (t - sent) / 1e6)
                stopped = self.answer_stopped.get(resp)
                if stopped is not None:
                    sink.ttfa.add(t, (t - stopped) / 1e6)
            if msg_frame < 0:
                msg_frame = frame
            release = self.resp_start + msg_frame * FRAME_NS - self.lead_ns
            sink.out_total.add(t, (t - sent) / 1e6)
            sink.out_pacing.add(t, max(0, release - sent) / 1e6)
            sink.hop_out.add(t, (t - max(sent, release)) / 1e6)
        if self.cur_resp == self.cut_resp:
            sink.events.add("frame_after_stop_audio", t)
        if msg_frame != 0 and self.play_end and t > self.play_end:
            sink.events.add("playout_underrun", t)
        frames = max(1, len(data) // FRAME_B64)
        self.play_end = max(self.play_end, t) + frames * FRAME_NS

    def on_stop_audio(self, t: int) -> None:
        # What the caller has heard of the cut response: received minus still queued at ACS.
        queued_ms = max(0, self.play_end - t) / 1e6
        self.heard_at_stop[self.cur_resp] = self.resp_ms.get(self.cur_resp, 0) - queued_ms
        self.cut_resp = self.cur_resp
        self.play_end = 0
        if self.barges_matched < len(self.barge_sent):
            sent = self.barge_sent[self.barges_matched]
            self.barges_matched += 1
            self.sink.barge.add(t, (t - sent) / 1e6)
        else:
            self.sink.events.add("stop_audio_without_barge_in", t)


class MediaSocket(WSListener):
    """ACS's end of the media WebSocket."""

    def __init__(self, call: Call) -> None:
        self.call = call

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT:
            t = now_ns()
            payload = frame.get_payload_as_bytes()
            at = payload.find(b'"Data"')
            if at >= 0:
                start = payload.index(b'"', at + 6) + 1
                self.call.on_audio(payload[start : payload.index(b'"', start)], t)
                return
            message = json.loads(payload)
            kind_value = str(message.get("Kind") or message.get("kind") or "").lower()
            if kind_value == "stopaudio":
                self.call.on_stop_audio(t)
            else:
                self.call.sink.events.add(f"acs_got_{kind_value or 'unknown'}")
        elif kind == WSMsgType.CLOSE:
            if self.call.hangup_ns is None:
                self.call.fail(f"media_closed_by_server_{int(frame.get_close_code().value)}")
            else:
                transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.call.hangup_ns is None:
            self.call.fail("media_socket_dropped")
