"""One simulated phone call, start to finish, as ACS would place it.

IncomingCall (Event Grid, §1.3) → the server answers through REST (§2.2) → CallConnected
(CloudEvents + JWT, §3, §5.1) → ACS opens the media WebSocket (JWT + headers, §4.1, §5.2) and
MediaStreamingStarted → caller audio in real time, agent audio recorded → hang-up →
CallDisconnected.  Every wait has a deadline; a missed one fails the call, never the run.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from ..._httpx import httpx
from ..tokens import CALLBACK_TOKEN_LIFETIME_S, WEBSOCKET_TOKEN_LIFETIME_S, TokenSigner
from .audio import Clip, write_wav
from .media import MediaLink, PreparedClip, prepare_clip
from .registry import CallRegistry, SimCall
from .report import CallReport, finish_turns
from .script import Step, run_script
from .wire import AudioFrameEncoder, WallClock, cloud_event, incoming_call_event

__all__ = ["CallContext", "CallOptions", "place_call"]

logger = logging.getLogger(__name__)

RECIPIENT = "+18005550100"


@dataclass(frozen=True)
class CallOptions:
    """The call script and its deadlines (seconds)."""

    barge_in: bool = False
    #: Wait for (and let play out) a greeting before the caller speaks.
    expect_greeting: bool = True
    lead_in_s: float = 0.5
    #: Agent audio is "finished" once played out and nothing new came for this long.
    quiet_s: float = 0.6
    #: Barge-in: start talking this long after the agent's answer began.
    barge_in_delay_s: float = 0.3
    answer_timeout_s: float = 10.0
    http_timeout_s: float = 10.0
    connect_timeout_s: float = 10.0
    greeting_timeout_s: float = 15.0
    response_timeout_s: float = 20.0
    playout_timeout_s: float = 60.0
    stop_audio_timeout_s: float = 5.0
    silence_threshold_rms: float = 100.0
    record_dir: Path | None = None
    #: The agent is expected to hang up after answering the last utterance (its end_call): the
    #: caller waits for the REST hang-up instead of hanging up, and its absence fails the call.
    expect_agent_hang_up: bool = False
    agent_hang_up_timeout_s: float = 10.0


@dataclass(frozen=True)
class CallContext:
    """What every call of one simulated ACS resource shares."""

    registry: CallRegistry
    signer: TokenSigner
    clock: WallClock
    http: httpx.AsyncClient
    topic: str
    #: The caller's speech: one utterance, or two split at the recording's longest silence.
    utterances: tuple[Clip, ...]
    progress: Callable[[int, str], None] = lambda _index, _text: None


async def place_call(
    ctx: CallContext, server_url: str, options: CallOptions, index: int
) -> CallReport:
    """Place one call against ``server_url`` and return its report (never raises for a failure)."""
    caller = f"+1425555{index % 10000:04d}"
    report = CallReport(index=index, caller=f"4:{caller}")
    call = SimCall(
        incoming_call_context=secrets.token_urlsafe(96), caller=caller, recipient=RECIPIENT
    )
    report.call_connection_id, report.correlation_id = call.call_connection_id, call.correlation_id
    started = trio.current_time()
    ctx.registry.add(call)
    try:
        await _place(ctx, server_url.rstrip("/"), options, call, report)
    except (httpx.HTTPError, OSError) as exc:
        report.fail(f"network error talking to the server: {exc!r}")
    finally:
        ctx.registry.remove(call)
        report.duration_s = round(trio.current_time() - started, 3)
    if call.rest_problems:
        report.deviations.update({problem: 1 for problem in call.rest_problems})
    ctx.progress(index, "done: " + ("OK" if report.ok else f"FAILED ({report.failure})"))
    return report


async def _place(
    ctx: CallContext, server: str, options: CallOptions, call: SimCall, report: CallReport
) -> None:
    now = trio.current_time()
    event = incoming_call_event(
        event_id=str(uuid.uuid4()),
        topic=ctx.topic,
        caller=call.caller,
        recipient=call.recipient,
        incoming_call_context=call.incoming_call_context,
        server_call_id=call.server_call_id,
        correlation_id=call.correlation_id,
        event_time=ctx.clock.event_grid(now),
    )
    # Event Grid delivery headers (docs/protocols/acs.md §1.2: normal events carry Notification [INF]).
    headers = {"aeg-event-type": "Notification", "aeg-delivery-count": "0",
               "aeg-subscription-name": "ACS-SIMULATOR", "aeg-data-version": "1.0",
               "aeg-metadata-version": "1"}  # fmt: skip
    with trio.fail_after(options.http_timeout_s):
        response = await ctx.http.post(f"{server}/api/incomingCall", json=event, headers=headers)
    report.incoming_call_status = response.status_code
    if not response.is_success:
        report.fail(f"IncomingCall webhook answered HTTP {response.status_code}")
        return
    with trio.move_on_after(options.answer_timeout_s):
        await call.answered.wait()
    if call.answer is None:
        why = "; ".join(call.rest_problems) or "no answer request arrived"
        report.fail(f"server did not answer within {options.answer_timeout_s:g} s ({why})")
        return
    answer = call.answer
    report.answer_ms = round((answer.received_at - now) * 1000, 1)
    report.audio_format = answer.audio_format
    if answer.audio_format != "pcm24KMono":
        report.deviation(f"answered with audioFormat {answer.audio_format} (contract: pcm24KMono)")
    if answer.audio_channel_type != "mixed":
        report.deviation(
            f"answered with audioChannelType {answer.audio_channel_type} (contract: mixed)"
        )
    ctx.progress(
        report.index, f"answered in {report.answer_ms:.0f} ms, format {answer.audio_format}"
    )

    call.state = "connected"
    status = await _callback(ctx, options, call, "CallConnected")
    if status is None or not 200 <= status < 300:
        report.fail(f"CallConnected callback answered {status}")
    else:
        await _media(ctx, options, call, report)
    call.state = "disconnected"
    with trio.move_on_after(options.http_timeout_s, shield=True):
        status = await _callback(ctx, options, call, "CallDisconnected")
        if status is None or not 200 <= status < 300:
            report.deviation(f"CallDisconnected callback answered {status}")


async def _callback(
    ctx: CallContext,
    options: CallOptions,
    call: SimCall,
    name: str,
    extra: dict[str, Any] | None = None,
) -> int | None:
    """POST one CloudEvents callback with a fresh JWT (§3, §5.1); returns the HTTP status."""
    assert call.answer is not None
    event = cloud_event(
        name,
        event_id=str(uuid.uuid4()),
        call_connection_id=call.call_connection_id,
        server_call_id=call.server_call_id,
        correlation_id=call.correlation_id,
        time=ctx.clock.cloud_event(trio.current_time()),
        operation_context=call.answer.operation_context,
        extra=extra,
    )
    token = ctx.signer.sign(CALLBACK_TOKEN_LIFETIME_S)
    try:
        with trio.fail_after(options.http_timeout_s):
            response = await ctx.http.post(
                call.answer.callback_uri, json=[event], headers={"Authorization": f"Bearer {token}"}
            )
    except (httpx.HTTPError, trio.TooSlowError) as exc:
        logger.warning("call %s: %s callback failed: %r", call.call_connection_id, name, exc)
        return None
    return response.status_code


async def _media(ctx: CallContext, options: CallOptions, call: SimCall, report: CallReport) -> None:
    assert call.answer is not None
    url = call.answer.transport_url
    headers = [
        (b"Authorization", f"Bearer {ctx.signer.sign(WEBSOCKET_TOKEN_LIFETIME_S)}".encode()),
        (b"x-ms-call-connection-id", call.call_connection_id.encode()),
        (b"x-ms-call-correlation-id", call.correlation_id.encode()),
    ]
    ssl_context = ssl.create_default_context() if urlsplit(url).scheme == "wss" else None
    rate = call.answer.sample_rate
    encoder = AudioFrameEncoder(report.caller)
    clips = [
        prepare_clip(c.resampled(rate), encoder, options.silence_threshold_rms)
        for c in ctx.utterances
    ]
    try:
        async with open_websocket_url(
            url, ssl_context, extra_headers=headers, max_message_size=4 * 1024 * 1024,
            connect_timeout=options.connect_timeout_s, disconnect_timeout=2.0,
        ) as ws:  # fmt: skip
            link = MediaLink(
                ws, rate=rate, subscription_id=call.subscription_id, encoder=encoder,
                clock=ctx.clock, report=report, opened_at=trio.current_time(),
                on_event=lambda text: ctx.progress(report.index, text),
            )  # fmt: skip
            await _converse(ctx, options, call, report, link, clips)
        # trio-websocket 0.12: when the *server* closes the WebSocket, a client waits for the
        # server's TCP close and then leaves its own stream open (_impl.py _reader_task), so
        # ACS's side of a server-ended call would leak the socket.  Close it ourselves.
        with trio.move_on_after(1.0, shield=True):
            await ws._stream.aclose()
    except HandshakeError as exc:
        report.fail(f"media WebSocket handshake failed: {exc!r}")
        return
    finish_turns(report.turns, link.audio_s, report.stop_audio_s)
    report.received_audio_ms = round(link.track.received_ms, 1)
    report.discarded_audio_ms = round(link.track.discarded_ms, 1)
    if link.audio_s:
        report.receive_span_ms = round((link.audio_s[-1] - link.audio_s[0]) * 1000, 1)
    report.max_lead_ms = round(link.track.max_lead_ms, 1)
    report.gaps_ms = [round(g, 1) for g in link.track.gaps_ms]
    report.stop_audio_s = [round(t, 3) for t in report.stop_audio_s]
    if options.record_dir is not None:
        path = await trio.to_thread.run_sync(_record, options.record_dir, report, link)
        report.recording = str(path)


async def _converse(
    ctx: CallContext,
    options: CallOptions,
    call: SimCall,
    report: CallReport,
    link: MediaLink,
    clips: list[PreparedClip],
) -> None:
    """Run sender, recorder and script until one side hangs up."""
    step = Step()

    def say(text: str) -> None:
        ctx.progress(report.index, text)

    # §3: MediaStreamingStarted carries mediaStreamingUpdate; the enum values are from §3, the
    # contentType spelling "Audio" is [INF].
    streaming = {"mediaStreamingUpdate": {"contentType": "Audio",
                 "mediaStreamingStatus": "mediaStreamingStarted",
                 "mediaStreamingStatusDetails": "subscriptionStarted"}}  # fmt: skip

    async def script_then_hang_up() -> None:
        try:
            await run_script(options, report, link, clips, step, say)
            if options.expect_agent_hang_up:
                step.name = "waiting for the agent to hang up"
                with trio.fail_after(options.agent_hang_up_timeout_s):
                    await trio.sleep_forever()  # ends when server_rest_hang_up cancels us
        except trio.TooSlowError:
            report.fail(f"timed out {step.name}")
        report.hung_up_by = report.hung_up_by or "simulator"
        await link.hang_up("caller hung up")
        nursery.cancel_scope.cancel()

    async def server_rest_hang_up() -> None:
        await call.hung_up.wait()
        report.hung_up_by = report.hung_up_by or f"server (REST {call.hang_up_via})"
        # > 0: the hang-up came after the agent's audio had played; < 0: it cut the agent off.
        report.hang_up_after_played_ms = round((link.now_s() - link.track.play_end_s) * 1000, 1)
        ctx.progress(report.index, f"server hung up via REST {call.hang_up_via}")
        await link.hang_up("call ended by the application")  # ACS then tears down the media
        nursery.cancel_scope.cancel()

    async def record_until_closed() -> None:
        await link.receive_loop()
        if not link.closed_by_us and options.expect_agent_hang_up and step.final:
            # The server's order for an ending of its own: close the media socket, then hang up
            # over REST (server_rest_hang_up takes it from there).
            with trio.move_on_after(options.agent_hang_up_timeout_s):
                await call.hung_up.wait()
            if call.hung_up.is_set():
                return
        if not link.closed_by_us:
            report.hung_up_by = report.hung_up_by or "server (WebSocket close)"
            ctx.progress(report.index, f"server closed the media socket ({report.close_code})")
        nursery.cancel_scope.cancel()

    async def media_started() -> None:
        status = await _callback(ctx, options, call, "MediaStreamingStarted", streaming)
        if status is None or not 200 <= status < 300:
            report.deviation(f"MediaStreamingStarted callback answered {status}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(media_started)
        nursery.start_soon(record_until_closed)
        nursery.start_soon(_send_until_closed, link)
        nursery.start_soon(server_rest_hang_up)
        nursery.start_soon(script_then_hang_up)
    agent_ending = options.expect_agent_hang_up and step.final
    if report.hung_up_by.startswith("server (REST") and agent_ending:
        say(f"the agent hung up {report.hang_up_after_played_ms:.0f} ms after its audio played")
    elif report.hung_up_by.startswith("server"):
        report.fail(f"{report.hung_up_by} while {step.name}")


async def _send_until_closed(link: MediaLink) -> None:
    with contextlib.suppress(ConnectionClosed):  # the recorder sees the close and ends the call
        await link.send_loop()


def _record(directory: Path, report: CallReport, link: MediaLink) -> Path:
    """Stereo WAV of the call as heard: caller left, agent (after StopAudio flushes) right."""
    directory.mkdir(parents=True, exist_ok=True)
    rate = link.rate
    lead = np.zeros(round(link.stream_start_s * rate), dtype=np.int16)
    caller = np.concatenate([lead, *link.caller_frames]) if link.caller_frames else lead
    agent = link.track.render(max(len(caller) / rate, link.track.play_end_s))
    length = max(len(caller), len(agent))
    both = np.zeros((length, 2), dtype=np.int16)
    both[: len(caller), 0] = caller
    both[: len(agent), 1] = agent
    path = directory / f"call-{report.index:04d}.wav"
    write_wav(path, rate, both)
    return path
