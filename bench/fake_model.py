"""A scripted realtime model on picows, speaking the GA event names (docs/protocols/realtime.md §2–§5).

Not a VAD: the caller frames carry their call id and frame number (see :mod:`bwire`), and each
call's :class:`~bwire.Script` says at which frame the caller starts and stops speaking.  For every
turn the peer sends what a GA server sends for a VAD turn (§3.2 "Event order"):
``speech_started`` … ``speech_stopped``, ``committed``, ``conversation.item.added``, then at once
(model "think time" 0, so the bridge's own share of time-to-first-audio is what is measured)
``response.created``, ``output_item.added``, ``content_part.added``, audio deltas (each with a
transcript delta) faster than real time, and the ``…done`` events, ``response.done``,
``rate_limits.updated``.  A barge-in is a ``speech_started`` while an answer is still being sent
or played: the peer stops its deltas and sends ``response.done`` with status ``cancelled`` and
reason ``turn_detected`` (§3.2, §5 step 6).  ``conversation.item.truncate`` gets
``conversation.item.truncated``.

It also measures two things: the inbound hop of **every** caller frame (its send time, read from
the marker at the start of each 20 ms frame of an ``input_audio_buffer.append``, to the append's
arrival here: the wait for the batch is included), plus the last frame of each append alone (the
bridge's own share), and the teardown (the moment the server's close frame arrives, per call).
Every 20 ms frame of every delta it sends carries a marker too (response, frame number within the
response, send time), so the ACS end can time every outbound frame.
"""

# JSON templates use %-formatting: f-strings would need every brace doubled.
# ruff: noqa: UP031
from __future__ import annotations

import asyncio
import json
import ssl as ssl_module
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bwire import (
    FRAME_B64,
    FRAME_BYTES,
    MARK_B64,
    MARK_BYTES,
    delta_marker_b64,
    noise_tail_b64,
    read_caller_marker,
)
from metrics import Sink, now_ns
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

if TYPE_CHECKING:
    from caller import Call

_APPEND = b"input_audio_buffer.append"


class ModelPeer:
    """The server side of every model socket; ``calls`` maps call id → :class:`caller.Call`."""

    def __init__(
        self, sink: Sink, calls: dict[int, Call], *, delta_ms: int = 100, speedup: float = 4.0
    ) -> None:
        self.sink = sink
        self.calls = calls
        self.delta_ms = delta_ms
        self.delta_frames = delta_ms // 20
        self.delta_interval = delta_ms / 1000 / speedup
        # Every 20 ms frame of a delta = its marker + the same pre-encoded noise, so the ACS end
        # can time every frame; only the 32-character markers change per send.
        self.frame_tail = noise_tail_b64(FRAME_BYTES - MARK_BYTES, seed=7)
        self.open_sockets = 0
        self.server: asyncio.Server | None = None

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, ssl: ssl_module.SSLContext | None = None
    ) -> int:
        """Listen (TLS when ``ssl`` is given: the server then dials ``wss://``)."""
        self.server = await ws_create_server(
            lambda request: (
                ModelSocket(self) if _path(request).startswith("/v1/realtime") else None
            ),
            host,
            port,
            websocket_handshake_timeout=10,
            ssl=ssl,
        )
        return int(self.server.sockets[0].getsockname()[1])


def _path(request: Any) -> str:
    path = request.path
    return path.decode("latin-1") if isinstance(path, bytes | bytearray) else str(path)


class Response:
    __slots__ = ("frame_no", "frames_left", "item", "number", "rid", "timer")

    def __init__(self, number: int, frames: int) -> None:
        self.number = number
        self.frames_left = frames
        self.frame_no = 0  # frames of this response sent so far (the next frame's number)
        self.timer: asyncio.TimerHandle | None = None
        self.rid = f"resp_{number}"
        self.item = f"item_a{number}"


class ModelSocket(WSListener):
    def __init__(self, peer: ModelPeer) -> None:
        self.peer = peer
        self.transport: WSTransport | None = None
        self.call: Call | None = None
        self.pending_greeting = False
        self.next_action = 0
        self.response: Response | None = None
        self.responses = 0
        self.events = 0
        self.closed_seen = False

    # --- plumbing ---------------------------------------------------------------------------

    def send(self, text: str) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, text.encode())

    def event_id(self) -> str:
        self.events += 1
        return f"event_{self.events}"

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.peer.open_sockets += 1
        self.send(
            '{"type": "session.created", "event_id": "%s", "session": {"type": "realtime", '
            '"object": "realtime.session", "id": "sess_bench", "model": "gpt-realtime"}}'
            % self.event_id()
        )

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.peer.open_sockets -= 1
        self.stop_response()
        if not self.closed_seen:
            self.closed(now_ns(), abrupt=True)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT:
            if not frame.fin:
                self.peer.sink.events.add("model_fragmented_message")
                return
            payload = frame.get_payload_as_bytes()
            if _APPEND in payload[:64]:
                self.on_append(payload)
            else:
                self.on_event(json.loads(payload))
        elif kind == WSMsgType.CLOSE:
            self.closed(now_ns(), abrupt=False)
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()

    def closed(self, t_ns: int, *, abrupt: bool) -> None:
        self.closed_seen = True
        if abrupt:
            self.peer.sink.events.add("model_socket_dropped_without_close")
        if self.call is not None:
            self.call.model_closed(t_ns)

    # --- caller audio -------------------------------------------------------------------------

    def on_append(self, payload: bytes) -> None:
        t = now_ns()
        key = payload.find(b'"audio"')
        start = payload.index(b'"', key + 7) + 1
        end = payload.index(b'"', start)
        frames = (end - start) // FRAME_B64
        if frames < 1:
            return
        # Every frame of the append is timed: batch waits are part of what the caller gets.
        # The last frame's time is the bridge's own share (hop_in_last).
        marks = []
        for at in range(start, start + frames * FRAME_B64, FRAME_B64):
            mark = read_caller_marker(payload[at : at + MARK_B64])
            if mark is None:
                self.peer.sink.events.add("append_without_marker")
                return
            marks.append(mark)
        call_id, seq, sent_ns = marks[-1]
        if self.call is None:
            call = self.peer.calls.get(call_id)
            if call is None:
                self.peer.sink.events.add("append_for_unknown_call")
                return
            self.call = call
            call.model_socket = self
            if self.pending_greeting:
                self.pending_greeting = False
                self.start_response(self.call.script.greeting_frames, stopped_ns=None)
        sink = self.peer.sink
        for _, _, frame_sent in marks:
            sink.hop_in.add(t, (t - frame_sent) / 1e6)
        sink.hop_in_last.add(t, (t - sent_ns) / 1e6)
        actions = self.call.script.actions
        while self.next_action < len(actions) and actions[self.next_action].seq <= seq:
            action = actions[self.next_action]
            self.next_action += 1
            if action.kind == "start":
                self.speech_started(action.turn, action.barge)
            else:
                self.speech_stopped(action.turn)

    def speech_started(self, turn: int, barge: bool) -> None:
        t = now_ns()
        self.send(
            '{"type": "input_audio_buffer.speech_started", "event_id": "%s", "audio_start_ms": %d, '
            '"item_id": "item_u%d"}' % (self.event_id(), turn * 1000, turn)
        )
        assert self.call is not None
        if barge:
            self.call.barge_sent.append(t)
        if self.response is not None:  # server VAD interrupts the response (§5 step 1)
            response = self.response
            self.stop_response()
            self.send(
                '{"type": "response.done", "event_id": "%s", "response": {"object": "realtime.response", '
                '"id": "%s", "status": "cancelled", "status_details": {"type": "cancelled", '
                '"reason": "turn_detected"}, "output": []}}' % (self.event_id(), response.rid)
            )

    def speech_stopped(self, turn: int) -> None:
        t = now_ns()
        self.send(
            '{"type": "input_audio_buffer.speech_stopped", "event_id": "%s", "audio_end_ms": %d, '
            '"item_id": "item_u%d"}' % (self.event_id(), turn * 1000 + 1500, turn)
        )
        self.send(
            '{"type": "input_audio_buffer.committed", "event_id": "%s", "previous_item_id": null, '
            '"item_id": "item_u%d"}' % (self.event_id(), turn)
        )
        self.send(
            '{"type": "conversation.item.added", "event_id": "%s", "previous_item_id": null, "item": '
            '{"id": "item_u%d", "object": "realtime.item", "type": "message", "status": "completed", '
            '"role": "user", "content": [{"type": "input_audio", "transcript": null}]}}'
            % (self.event_id(), turn)
        )
        assert self.call is not None
        self.start_response(self.call.script.answer_frames, stopped_ns=t)

    # --- responses ------------------------------------------------------------------------------

    def start_response(self, frames: int, stopped_ns: int | None) -> None:
        assert self.call is not None
        number = self.responses
        self.responses += 1
        if stopped_ns is not None:
            self.call.answer_stopped[number] = stopped_ns
        self.stop_response()
        response = self.response = Response(number, frames)
        self.send(
            '{"type": "response.created", "event_id": "%s", "response": {"object": "realtime.response", '
            '"id": "%s", "status": "in_progress", "status_details": null, "output": []}}'
            % (self.event_id(), response.rid)
        )
        self.send(
            '{"type": "response.output_item.added", "event_id": "%s", "response_id": "%s", "output_index": 0, '
            '"item": {"id": "%s", "object": "realtime.item", "type": "message", "status": "in_progress", '
            '"role": "assistant", "content": []}}' % (self.event_id(), response.rid, response.item)
        )
        self.send(
            '{"type": "response.content_part.added", "event_id": "%s", "response_id": "%s", "item_id": "%s", '
            '"output_index": 0, "content_index": 0, "part": {"type": "output_audio", "transcript": ""}}'
            % (self.event_id(), response.rid, response.item)
        )
        self.send_delta()

    def send_delta(self) -> None:
        response = self.response
        if response is None or self.transport is None or self.transport.is_close_frame_sent:
            return
        response.timer = None
        assert self.call is not None
        frames = min(self.peer.delta_frames, response.frames_left)
        t = now_ns()
        call_id, number, first = self.call.call_id, response.number, response.frame_no
        tail = self.peer.frame_tail
        audio = "".join(
            delta_marker_b64(call_id, number, first + k, t) + tail for k in range(frames)
        )
        self.send(
            '{"type": "response.output_audio.delta", "event_id": "%s", "response_id": "%s", "item_id": "%s", '
            '"output_index": 0, "content_index": 0, "delta": "%s"}'
            % (self.event_id(), response.rid, response.item, audio)
        )
        self.send(
            '{"type": "response.output_audio_transcript.delta", "event_id": "%s", "response_id": "%s", '
            '"item_id": "%s", "output_index": 0, "content_index": 0, "delta": "words "}'
            % (self.event_id(), response.rid, response.item)
        )
        response.frame_no += frames
        response.frames_left -= frames
        if response.frames_left > 0:
            loop = asyncio.get_running_loop()
            response.timer = loop.call_later(self.peer.delta_interval, self.send_delta)
        else:
            self.finish_response(response)

    def finish_response(self, response: Response) -> None:
        rid, item = response.rid, response.item
        ids = '"response_id": "%s", "item_id": "%s", "output_index": 0' % (rid, item)
        self.send(
            '{"type": "response.output_audio.done", "event_id": "%s", %s, "content_index": 0}'
            % (self.event_id(), ids)
        )
        self.send(
            '{"type": "response.output_audio_transcript.done", "event_id": "%s", %s, "content_index": 0, '
            '"transcript": "words words words"}' % (self.event_id(), ids)
        )
        self.send(
            '{"type": "response.content_part.done", "event_id": "%s", %s, "content_index": 0, '
            '"part": {"type": "output_audio", "transcript": "words words words"}}'
            % (self.event_id(), ids)
        )
        item_json = (
            '{"id": "%s", "object": "realtime.item", "type": "message", "status": "completed", "role": "assistant", '
            '"content": [{"type": "output_audio", "transcript": "words words words"}]}' % item
        )
        self.send(
            '{"type": "response.output_item.done", "event_id": "%s", "response_id": "%s", "output_index": 0, '
            '"item": %s}' % (self.event_id(), rid, item_json)
        )
        self.send(
            '{"type": "response.done", "event_id": "%s", "response": {"object": "realtime.response", "id": "%s", '
            '"status": "completed", "status_details": null, "output": [%s], "usage": {"total_tokens": 100, '
            '"input_tokens": 40, "output_tokens": 60}}}' % (self.event_id(), rid, item_json)
        )
        self.send(
            '{"type": "rate_limits.updated", "event_id": "%s", "rate_limits": [{"name": "requests", "limit": 1000, '
            '"remaining": 999, "reset_seconds": 60}, {"name": "tokens", "limit": 100000, "remaining": 99000, '
            '"reset_seconds": 60}]}' % self.event_id()
        )
        self.response = None

    def stop_response(self) -> None:
        if self.response is not None and self.response.timer is not None:
            self.response.timer.cancel()
        self.response = None

    # --- other client events --------------------------------------------------------------------

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        handler: Callable[[dict[str, Any]], None] | None = {
            "session.update": self.on_session_update,
            "response.create": self.on_response_create,
            "conversation.item.truncate": self.on_truncate,
        }.get(str(kind))
        if handler is not None:
            handler(event)
        else:
            self.peer.sink.events.add(f"model_got_{kind}")

    def on_session_update(self, event: dict[str, Any]) -> None:
        session = dict(event.get("session") or {})
        self.send(
            json.dumps({"type": "session.updated", "event_id": self.event_id(), "session": session})
        )

    def on_response_create(self, event: dict[str, Any]) -> None:
        if self.call is None:
            self.pending_greeting = True  # answered once the first append names the call
        else:
            self.start_response(self.call.script.greeting_frames, stopped_ns=None)

    def on_truncate(self, event: dict[str, Any]) -> None:
        self.peer.sink.events.add("truncate")
        # Truncate precision: the server's audio_end_ms against what the caller had heard when
        # StopAudio reached ACS (positive: the model will believe more was heard than was).
        item = str(event.get("item_id", ""))
        if self.call is not None and item.startswith("item_a") and item[6:].isdigit():
            heard = self.call.heard_at_stop.get(int(item[6:]))
            if heard is not None:
                error = float(event.get("audio_end_ms", 0)) - heard
                self.peer.sink.truncate_err.add(now_ns(), error)
        self.send(
            json.dumps(
                {
                    "type": "conversation.item.truncated",
                    "event_id": self.event_id(),
                    "item_id": event.get("item_id"),
                    "content_index": event.get("content_index", 0),
                    "audio_end_ms": event.get("audio_end_ms", 0),
                }
            )
        )
