"""The browser softphone: a page that calls the agent through the same ``run_call`` as a phone.

Off unless enabled (``SOFTPHONE=1`` for ``acs-trio serve``; ``acs-trio phone`` always), and every
route sits behind the secret token in its URL (docs/softphone.md)::

    GET  /softphone/<token>/                 the page (static HTML/JS/CSS from the package)
    GET  /softphone/<token>/<file>           its scripts and style sheet
    WS   /softphone/<token>/events           side channel: one browser call's JSON events
    WS   /softphone/<token>/media/<call>     the call's media: the ACS media protocol, exactly

The page opens the events socket first; the server creates the call (a :class:`CallHandle`
with an id ``softphone-…``) and answers with ``{"type": "call", "media_path": …}``, naming a
second, one-time secret for the media socket — the way ACS is handed a per-call transport URL
when a call is answered.  The media socket is wrapped in the same
:class:`~acs_trio.control.quart_media.QuartMediaSocket` as ACS's and fed to the same ``run_call``:
bad input from the browser is bad ACS input, and a closed media socket is a hang-up.  Closing the
events socket (the tab went away) ends the call too.  There is no ACS call to hang up over REST.

The side channel's events come from :class:`PageEvents`, the call's
:class:`~acs_trio.call.observer.CallObserver` (with metrics and the recorder beside it on
``acs-trio serve``, control/observe.py): it turns hooks into the JSON events of docs/softphone.md
and queues them, bounded, for the events socket.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from itertools import count
from typing import Any, cast

import trio
from quart import Response, websocket

from ..call.lifecycle import CallHandle, CallIds, CallSummary, EndReason
from ..call.model_socket import ModelConnector
from ..call.observer import NullObserver
from ..config import (
    SOFTPHONE_EVENT_QUEUE,
    SOFTPHONE_MAX_CALLS,
    SOFTPHONE_MEDIA_CONNECT_S,
    Settings,
    SoftphoneSettings,
)
from ..errors import MediaClosed
from ..tools import Tool
from .quart_media import AcsTrioApp, MediaWebsocket, QuartMediaSocket

__all__ = [
    "BrowserCall",
    "PageEvents",
    "SoftphoneCalls",
    "create_phone_app",
    "install_softphone",
    "softphone_path",
]

logger = logging.getLogger(__name__)

RunCall = Callable[..., Awaitable[CallSummary]]
#: One side-channel event: ``type`` plus its fields, JSON-serialisable (docs/softphone.md).
PageEvent = dict[str, Any]

#: The page's files, served from the package (no build step); anything else is 404.
STATIC_FILES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "softphone.js": "text/javascript; charset=utf-8",
    "worklet.js": "text/javascript; charset=utf-8",
    "softphone.css": "text/css; charset=utf-8",
}
#: The token is the page's only credential: keep it out of Referer headers and caches.
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; script-src 'self'; style-src 'self'; "
        "img-src 'self' data:; frame-ancestors 'none'"
    ),
}
#: Bound on one side-channel write: a page that stops reading ends its call.
_EVENT_SEND_TIMEOUT_S = 5.0
#: After the call ends, how long the events socket waits for the media handler to finish.
_MEDIA_DONE_TIMEOUT_S = 10.0


def softphone_path(settings: SoftphoneSettings) -> str:
    """The page's path; the URL a user opens is the server's base URL plus this."""
    return f"/softphone/{settings.token}/"


@dataclass
class BrowserCall:
    """One browser call: created by the events socket, run by the media socket."""

    handle: CallHandle
    media_token: str
    events_send: trio.MemorySendChannel[PageEvent]
    events_recv: trio.MemoryReceiveChannel[PageEvent]
    media_claimed: bool = False
    media_connected: trio.Event = field(default_factory=trio.Event)
    media_done: trio.Event = field(default_factory=trio.Event)
    events_dropped: int = 0

    def publish(self, event: PageEvent) -> None:
        """Queue one event for the page: never blocks; when the page falls behind, it is dropped."""
        try:
            self.events_send.send_nowait(event)
        except trio.WouldBlock:
            self.events_dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the page's socket is gone; the call is ending


class PageEvents(NullObserver):
    """A browser call's observer: each hook the page shows becomes one side-channel event.

    ``publish`` must not block or raise (:meth:`BrowserCall.publish`: a bounded queue that drops
    when full).  Latencies are rounded to 0.1 ms; the n-th ``speech_stopped`` is turn n, as
    ``CallSummary.turns`` counts them.
    """

    def __init__(self, publish: Callable[[PageEvent], None]) -> None:
        self._publish = publish
        self._turns = 0

    def on_start(self, ids: CallIds, started_at: float) -> None:
        self._publish({"type": "call_started", "call_id": ids.call_id})

    def on_caller_speech(self, started: bool, at: float, *, barge_in: bool = False) -> None:
        if started:
            self._publish({"type": "speech_started", "barge_in": barge_in})
        else:
            self._turns += 1
            self._publish({"type": "speech_stopped", "turn": self._turns})

    def on_transcript(self, role: str, text: str, at: float, *, item_id: str) -> None:
        self._publish({"type": "transcript", "role": role, "item_id": item_id, "text": text})

    def on_ttfa(self, ms: float, *, greeting: bool) -> None:
        metric = "greeting_ttfa" if greeting else "ttfa"
        self._publish({"type": "latency", "metric": metric, "ms": round(ms, 1)})

    def on_stop_audio(self, at: float, latency_ms: float, flushed_ms: float) -> None:
        self._publish({"type": "latency", "metric": "barge_in", "ms": round(latency_ms, 1)})

    def on_end(self, summary: CallSummary) -> None:
        self._publish(
            {
                "type": "call_ended",
                "reason": summary.end_reason.value,
                "detail": summary.end_detail,
                "duration_s": round(summary.duration_s, 3),
                "turns": summary.turns,
                "barge_ins": summary.barge_ins,
                "frames_in": summary.frames_in,
                "frames_out": summary.frames_out,
                "bad_acs_messages": summary.bad_acs_messages,
            }
        )


class SoftphoneCalls:
    """The live browser calls of this server (at most ``SOFTPHONE_MAX_CALLS``).

    ``app.extensions["acs_trio"]`` of the phone-only app, so :func:`~acs_trio.control.server.serve`
    drains it on SIGINT/SIGTERM through :meth:`stop`.
    """

    def __init__(
        self, max_calls: int = SOFTPHONE_MAX_CALLS, *, full: Callable[[], bool] | None = None
    ) -> None:
        self.max_calls = max_calls
        #: On ``acs-trio serve``: True when MAX_CONCURRENT_CALLS (phone + browser) are live.
        self.full = full
        self.calls: dict[str, BrowserCall] = {}
        self.draining = False
        self._numbers = count(1)
        self._idle = trio.Event()
        self._idle.set()

    def open(self) -> BrowserCall | str:
        """A new call, or why not (a log-ready reason)."""
        if self.draining:
            return "server is shutting down"
        if len(self.calls) >= self.max_calls:
            return f"{len(self.calls)} browser calls already (SOFTPHONE_MAX_CALLS)"
        if self.full is not None and self.full():
            return "the server is full (MAX_CONCURRENT_CALLS)"
        call_id = f"softphone-{next(self._numbers)}-{secrets.token_hex(3)}"
        send, recv = trio.open_memory_channel[PageEvent](SOFTPHONE_EVENT_QUEUE)
        call = BrowserCall(CallHandle(CallIds(call_id)), secrets.token_urlsafe(24), send, recv)
        # The page hears the call through its observer (observe_call keeps it beside its own).
        call.handle.observer = PageEvents(call.publish)
        self.calls[call.media_token] = call
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        return call

    def claim(self, media_token: str) -> BrowserCall | None:
        call = self.calls.get(media_token)
        if call is None or call.media_claimed or call.handle.end_request is not None:
            return None
        call.media_claimed = True
        call.media_connected.set()
        return call

    def release(self, call: BrowserCall) -> None:
        self.calls.pop(call.media_token, None)
        if not self.calls:
            self._idle.set()

    @property
    def ready(self) -> bool:
        return not self.draining

    async def stop(self, grace_s: float = 0.0) -> None:
        """Refuse new calls, end the live ones (``shutdown``) and wait, bounded, for them."""
        self.draining = True
        with trio.move_on_after(grace_s):
            await self._idle.wait()
        for call in list(self.calls.values()):
            call.handle.end(EndReason.SHUTDOWN, "server shutting down")
        with trio.move_on_after(_MEDIA_DONE_TIMEOUT_S):
            await self._idle.wait()


def create_phone_app(
    settings: Settings,
    softphone: SoftphoneSettings,
    connect_model: ModelConnector,
    *,
    run_call: RunCall | None = None,
) -> AcsTrioApp:
    """An app with only the softphone (and ``/healthz``): no ACS, no webhooks (``acs-trio phone``)."""
    if run_call is None:
        from ..call.bridge import run_call as real_run_call

        run_call = real_run_call
    calls = SoftphoneCalls()
    app = AcsTrioApp(__name__)
    app.extensions["acs_trio"] = calls  # serve() drains it on SIGINT/SIGTERM

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:  # noqa: ASYNC124 - Quart runs sync views in threads
        return {"status": "ok", "calls": len(calls.calls), "draining": calls.draining}

    install_softphone(
        app, settings, softphone, calls, connect_model=lambda: connect_model, run_call=run_call
    )
    return app


def _token_ok(settings: SoftphoneSettings, token: str) -> bool:
    return secrets.compare_digest(token.encode(), settings.token.encode())


def _page_files() -> dict[str, bytes]:
    folder = resources.files("acs_trio.control") / "static" / "softphone"
    return {name: (folder / name).read_bytes() for name in STATIC_FILES}


def install_softphone(
    app: AcsTrioApp,
    settings: Settings,
    softphone: SoftphoneSettings,
    calls: SoftphoneCalls,
    *,
    connect_model: Callable[[], ModelConnector],
    run_call: RunCall,
    tools: Sequence[Tool] = (),
) -> None:
    """Add the softphone routes to ``app`` (only ever called when the softphone is enabled).

    ``connect_model`` is read per call (the serve app creates its connector at start-up).
    """
    files = _page_files()

    def forbidden() -> Response:
        logger.warning("softphone: refused a request with a wrong token")
        return Response("forbidden\n", 403)

    @app.get("/softphone/<token>/")
    async def softphone_page(token: str) -> Response:  # noqa: ASYNC124 - Quart runs sync views in threads
        if not _token_ok(softphone, token):
            return forbidden()
        return Response(
            files["index.html"], 200, content_type=STATIC_FILES["index.html"], headers=_HEADERS
        )

    @app.get("/softphone/<token>/<name>")
    async def softphone_file(token: str, name: str) -> Response:  # noqa: ASYNC124 - Quart runs sync views in threads
        if not _token_ok(softphone, token):
            return forbidden()
        if name not in STATIC_FILES or name == "index.html":
            return Response("not found\n", 404)
        return Response(files[name], 200, content_type=STATIC_FILES[name], headers=_HEADERS)

    @app.websocket("/softphone/<token>/events")
    async def softphone_events(token: str) -> Response | None:
        if not _token_ok(softphone, token):
            return forbidden()
        call = calls.open()
        if isinstance(call, str):
            logger.warning("softphone: call refused: %s", call)
            return Response(f"{call}\n", 503)
        ws = cast(MediaWebsocket, cast(Any, websocket)._get_current_object())
        try:
            await ws.accept()
            await _run_events(
                QuartMediaSocket(ws), call, softphone, settings.limits.max_bad_messages
            )
        finally:
            calls.release(call)
        return None

    @app.websocket("/softphone/<token>/media/<media_token>")
    async def softphone_media(token: str, media_token: str) -> Response | None:
        if not _token_ok(softphone, token):
            return forbidden()
        call = calls.claim(media_token)
        if call is None:
            logger.warning("softphone: media socket refused: unknown, used or ended call")
            return Response("forbidden\n", 403)
        ws = cast(MediaWebsocket, cast(Any, websocket)._get_current_object())
        logger.info(
            "%s softphone media socket connected (extensions offered: %s)",
            call.handle.ids,
            ws.headers.get("Sec-WebSocket-Extensions", "none"),
        )
        try:
            with call.events_send:
                await ws.accept()
                await run_call(
                    QuartMediaSocket(ws),
                    connect_model(),
                    handle=call.handle,
                    agent=settings.agent,
                    limits=settings.limits,
                    # The agent's tools too (docs/tools.md); no ACS call: transfer is refused.
                    tools=tools,
                    actions=settings.actions,
                )
        finally:
            call.media_done.set()
            if call.events_dropped:
                logger.warning(
                    "%s softphone: %d events dropped (page too slow)",
                    call.handle.ids,
                    call.events_dropped,
                )
        return None


async def _run_events(
    ws: QuartMediaSocket, call: BrowserCall, softphone: SoftphoneSettings, max_inbound: int
) -> None:
    """Announce the call, forward its events until it ends; a closed page ends the call."""
    handle = call.handle
    logger.info("%s softphone call opened", handle.ids)
    media_path = f"/softphone/{softphone.token}/media/{call.media_token}"
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_page, ws, call, nursery.cancel_scope, max_inbound)
            await _send(
                ws, {"type": "call", "call_id": handle.ids.call_id, "media_path": media_path}
            )
            with trio.move_on_after(SOFTPHONE_MEDIA_CONNECT_S):
                await call.media_connected.wait()
            if call.media_connected.is_set():
                async with call.events_recv:
                    async for event in call.events_recv:
                        await _send(ws, event)
            else:
                handle.end(EndReason.MEDIA_TIMEOUT, "the page never opened its media socket")
                # Nobody will run the call: say so in its place.
                await _send(ws, {"type": "call_ended", "reason": "media_timeout", "detail": ""})
            nursery.cancel_scope.cancel()
    except* MediaClosed:
        handle.end(EndReason.CALLER_HUNG_UP, "the page's event socket closed")
    except* trio.TooSlowError:
        handle.end(EndReason.CALLER_HUNG_UP, "the page stopped reading its event socket")
    finally:
        if call.media_claimed:
            with trio.move_on_after(_MEDIA_DONE_TIMEOUT_S, shield=True):
                await call.media_done.wait()
        with trio.move_on_after(2.0, shield=True):
            await ws.close(1000, "call ended")


async def _watch_page(
    ws: QuartMediaSocket, call: BrowserCall, scope: trio.CancelScope, max_inbound: int
) -> None:
    """The page sends nothing on this socket; its close (the tab went away) is a hang-up.

    Whatever it sends is ignored, up to ``max_inbound`` messages (``CallLimits.max_bad_messages``, the
    media socket's bad-input limit); past that the call fails, as for junk on the media socket.
    """
    received = 0
    while True:
        try:
            await ws.receive()  # ignored: the side channel is one-way
        except MediaClosed:
            call.handle.end(EndReason.CALLER_HUNG_UP, "the page's event socket closed")
            scope.cancel()
            return
        received += 1
        if received > max_inbound:
            call.handle.end(
                EndReason.ACS_PROTOCOL_ERROR,
                f"the page sent {received} messages on its one-way event socket",
            )
            scope.cancel()
            return


async def _send(ws: QuartMediaSocket, event: PageEvent) -> None:
    with trio.fail_after(_EVENT_SEND_TIMEOUT_S):
        await ws.send(json.dumps(event))
