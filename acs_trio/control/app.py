"""The Quart-Trio application: webhook routes, the media WebSocket route, health and readiness.

Routes only; the call lifecycle lives in :mod:`acs_trio.control.control_plane`, decoding in
:mod:`acs_trio.wire.webhook`, token checks in :mod:`acs_trio.control.auth`, REST in :mod:`acs_trio.control.acs_rest`,
and the call itself in :func:`acs_trio.call.bridge.run_call`.  docs/control-plane.md has the route table
and the bad-input policy.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import trio
from hypercorn.utils import UnexpectedMessageError
from quart import Response, request, websocket

from ..call.lifecycle import CallHandle, CallSummary
from ..call.model_socket import ModelConnector
from ..config import (
    BODY_TIMEOUT_S,
    MAX_BODY_BYTES,
    MAX_EVENTS_PER_DELIVERY,
    RECORDINGS_SWEEP_INTERVAL_S,
    ControlTimeouts,
    Settings,
    model_shutdown_warning,
    transcription_shutdown_warning,
)
from ..errors import AuthError, KeysUnavailable, StateUnavailable
from ..tools import load_tools
from ..wire.webhook import (
    BadBody,
    IncomingCall,
    Skipped,
    ValidationRequest,
    decode_callbacks,
    decode_event_grid,
    load_json_array,
)
from . import hypercorn_ws
from .acs_rest import HttpTransport, open_acs_rest
from .auth import JwtVerifier, bearer_token
from .call_store import CallStore
from .control_plane import Admission, ControlPlane
from .log_safe import clip
from .loop_lag import LoopLag
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .model_ws import model_connector
from .observe import instrument_connector, observe_call
from .quart_media import AcsTrioApp, MediaWebsocket, QuartMediaSocket, request_path
from .rate_limit import TokenBucket
from .recording import run_retention
from .softphone import SoftphoneCalls, install_softphone
from .webhook_auth import incoming_call_authorized

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


RunCall = Callable[..., Awaitable[CallSummary]]


class _Runtime:
    """What exists only while the app is serving (lifespan): REST client, verifier, calls."""

    def __init__(
        self,
        settings: Settings,
        http_transport: HttpTransport | None,
        connect_model: ModelConnector | None,
        timeouts: ControlTimeouts,
    ) -> None:
        self.settings = settings
        self.acs = settings.require_acs()
        # Fail closed: without the webhook secret anybody could make this server answer calls.
        self.incoming_call_secret = settings.require_incoming_call_secret()
        self._http_transport = http_transport
        self._timeouts = timeouts
        if connect_model is None:
            # Fail closed: no model setting is a ConfigError here, never a fallback to a stand-in.
            connect_model = model_connector(settings.require_model(), settings.limits)
        obs = settings.observability
        #: This app's metrics (its own registry), or None with METRICS_ENABLED=false.
        self.metrics = Metrics() if obs.metrics_enabled else None
        if self.metrics is not None:
            connect_model = instrument_connector(connect_model, self.metrics)
            self.metrics.count_live_calls(
                lambda: 0 if self.plane is None else len(self.plane.calls)
            )
        self.loop_lag = LoopLag(None if self.metrics is None else self.metrics.loop_lag.observe)
        self.recordings_dir = Path(obs.recordings_dir) if obs.recordings_dir else None
        self.connect_model: ModelConnector = connect_model
        # Fail closed: a bad AGENT_TOOLS stops the server here, with one line.
        self.tools = (
            load_tools(settings.actions.tools_module) if settings.actions.tools_module else []
        )
        if (warning := model_shutdown_warning(settings.agent.model)) is not None:
            logger.warning("%s", warning)
        if warning := transcription_shutdown_warning(settings.agent.transcription_model):
            logger.warning("%s", warning)
        self.plane: ControlPlane | None = None
        self.verifier: JwtVerifier | None = None
        #: Browser calls, when SOFTPHONE=1 (docs/softphone.md); drained with the phone calls.
        self.softphone: SoftphoneCalls | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with open_acs_rest(
            self.acs.connection_string, transport=self._http_transport
        ) as rest:
            self.verifier = JwtVerifier(
                rest,
                jwks_url=self.acs.jwks_url,
                issuer=self.acs.jwt_issuer,
                audience=self.acs.resource_id,
            )
            server, webhook = self.settings.server, self.settings.webhook
            async with self._shared_state() as store, trio.open_nursery() as nursery:
                plane = ControlPlane(
                    rest,
                    public_base_url=self.acs.public_base_url,
                    max_concurrent_calls=server.max_concurrent_calls,
                    timeouts=self._timeouts,
                    answer_bucket=TokenBucket(webhook.answer_rate_per_s, webhook.answer_burst),
                    loop_lag=self.loop_lag,
                    max_loop_lag_s=server.max_loop_lag_ms / 1000,
                    overflow_target=webhook.overflow_target,
                    enable_dtmf_tones=self.settings.actions.dtmf_enabled,
                    connect_model=self.connect_model,
                    store=store,
                    cluster_max_calls=self.settings.cluster.max_calls,
                )
                if (softphone := self.softphone) is not None:
                    plane.other_calls = lambda: len(softphone.calls)
                self.plane = plane
                await nursery.start(self.verifier.run)  # keys at start-up, then on a timer
                await nursery.start(self.loop_lag.run)
                if self.recordings_dir is not None:
                    nursery.start_soon(
                        run_retention,
                        self.recordings_dir,
                        self.settings.observability.recordings_retention_days,
                        RECORDINGS_SWEEP_INTERVAL_S,
                    )
                await nursery.start(plane.serve)
                task_status.started()
                await plane.finished.wait()  # stop(): drained, closed, every supervisor done
                nursery.cancel_scope.cancel()

    @contextlib.asynccontextmanager
    async def _shared_state(self) -> AsyncIterator[CallStore | None]:
        """Redis when ``REDIS_URL`` is set (imported only then), else nothing: one process."""
        if not self.settings.cluster.redis_url:
            yield None
            return
        from .redis_state import open_redis_store

        async with open_redis_store(self.settings.cluster) as store:
            yield store

    async def stop(self) -> None:
        if self.softphone is not None:
            self.softphone.draining = True
        if self.plane is not None:
            await self.plane.drain(self.settings.server.shutdown_grace_s)
            self.plane.close()
        if self.softphone is not None:
            await self.softphone.stop()

    @property
    def ready(self) -> bool:
        return (
            self.plane is not None
            and self.plane.ready
            and self.verifier is not None
            and self.verifier.loaded
        )

    async def verify_jwt(self, authorization: str | None, *, known_call: bool = False) -> None:
        """Raise :class:`AuthError` (bad token) or :class:`KeysUnavailable` (cannot check now)."""
        if self.verifier is None:
            raise KeysUnavailable("not ready: no JWT verifier yet")
        await self.verifier.verify(bearer_token(authorization), known_call=known_call)

    async def authenticate(
        self, authorization: str | None, *, known_call: bool = False
    ) -> Response | None:
        """For HTTP callbacks: None if the ACS JWT verifies, else 401 (503 without keys)."""
        try:
            await self.verify_jwt(authorization, known_call=known_call)
        except KeysUnavailable as exc:
            logger.warning("%s refused: %s", request_path(), exc)
            return Response("cannot verify tokens right now\n", 503)
        except AuthError as exc:
            logger.warning("%s refused: %s", request_path(), exc)
            return Response("unauthorized\n", 401)
        return None


async def _json_events(max_bytes: int = MAX_BODY_BYTES) -> list[Any] | Response:
    mimetype = request.mimetype
    if mimetype and "json" not in mimetype:
        return Response(f"unsupported content type {mimetype}\n", 415)
    if request.content_length is not None and request.content_length > max_bytes:
        return Response("body too large\n", 413)
    # MAX_CONTENT_LENGTH → 413 for chunked bodies too
    body = cast(bytes, await request.get_data(as_text=False))
    try:
        return load_json_array(body)
    except BadBody as exc:
        logger.warning("%s: bad body: %s", request_path(), exc)
        return Response(f"{exc}\n", 400)


def create_app(
    settings: Settings | None = None,
    *,
    http_transport: HttpTransport | None = None,
    run_call: RunCall | None = None,
    connect_model: ModelConnector | None = None,
    timeouts: ControlTimeouts | None = None,
) -> AcsTrioApp:
    """Build the app.  ``hypercorn --worker-class trio 'acs_trio.control.app:create_app()'`` works as is.

    ``http_transport`` replaces the network for ACS REST and JWKS (tests pass
    ``httpx.MockTransport``); ``run_call``/``connect_model`` replace the call bridge / model socket.
    """
    settings = Settings.from_env() if settings is None else settings
    hypercorn_ws.install()  # a close hypercorn starts itself (1009) must end the call at once
    if run_call is None:
        from ..call.bridge import run_call as real_run_call

        run_call = real_run_call
    call_runner: RunCall = run_call
    timeouts = ControlTimeouts() if timeouts is None else timeouts
    rt = _Runtime(settings, http_transport, connect_model, timeouts)

    async def observed_runner(*args: Any, handle: CallHandle, **kwargs: Any) -> CallSummary:
        """``run_call`` with the call's metrics, recording and log ids (control/observe.py)."""
        async with observe_call(handle, metrics=rt.metrics, recordings_dir=rt.recordings_dir):
            return await call_runner(*args, handle=handle, **kwargs)

    app = AcsTrioApp(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["BODY_TIMEOUT"] = BODY_TIMEOUT_S  # slow-body clients (default 60 s)
    # quart-trio puts this deadline on the lifespan nursery at shutdown: room for the drain.
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = (
        settings.server.shutdown_grace_s + timeouts.hang_up_total_s + 10
    )
    app.extensions["acs_trio"] = rt

    @app.before_serving
    async def start() -> None:
        await app.nursery.start(rt.serve)

    @app.after_serving
    async def stop() -> None:
        await rt.stop()

    # Route functions are async even without an await: Quart runs sync views in a thread.
    @app.get("/healthz")
    async def healthz() -> dict[str, object]:  # noqa: ASYNC124 - Quart runs sync views in threads
        # Liveness, plus what an operator (and the leak check in bench/) wants to see.
        plane = rt.plane
        health: dict[str, object] = {
            "status": "ok",
            "calls": 0 if plane is None else len(plane.calls),
            "draining": False if plane is None else plane.draining,
        }
        if plane is not None and plane.store is not None:
            health["instance"] = plane.store.instance_id
            health["redis"] = "ok" if plane.store.available else "unreachable"
            health["cluster_calls"] = plane.store.cluster_calls
        return health

    @app.get("/metrics")
    async def metrics() -> Response:  # noqa: ASYNC124 - Quart runs sync views in threads
        if rt.metrics is None:
            return Response("metrics are off (METRICS_ENABLED=false)\n", 404)
        return Response(rt.metrics.expose(), 200, content_type=CONTENT_TYPE_LATEST)

    @app.after_request
    async def count_request(response: Response) -> Response:  # noqa: ASYNC124
        if rt.metrics is not None:
            rule = request.url_rule
            rt.metrics.http_request(
                rule.rule if rule is not None else "(unmatched)", response.status_code
            )
        return response

    @app.get("/readyz")
    async def readyz() -> Response:  # noqa: ASYNC124 - Quart runs sync views in threads
        return Response("ready\n", 200) if rt.ready else Response("not ready\n", 503)

    def webhook_refusal() -> Response | None:
        """401 unless the request carries INCOMING_CALL_SECRET; runs before the body is read."""
        if incoming_call_authorized(rt.incoming_call_secret, request.headers, request.args):
            return None
        logger.warning(
            "%s %s refused: no valid incoming-call secret (client %s)",
            request.method,
            request.path,
            clip(request.remote_addr),
        )
        return Response("unauthorized\n", 401)

    @app.route("/api/incomingCall", methods=["OPTIONS"], provide_automatic_options=False)
    async def incoming_call_handshake() -> Response:  # noqa: ASYNC124 - Quart runs sync views in threads
        # CloudEvents abuse protection (docs/protocols/acs.md §1.1, Event Grid webhook-event-delivery).
        refusal = webhook_refusal()
        if refusal is not None:
            return refusal
        origin = request.headers.get("WebHook-Request-Origin")
        if not origin:
            return Response("missing WebHook-Request-Origin\n", 400)
        logger.info("CloudEvents handshake from %s", clip(origin))
        headers = {"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*"}
        return Response("", 200, headers=headers)

    @app.post("/api/incomingCall")
    async def incoming_call() -> Response | dict[str, str]:
        refusal = webhook_refusal()  # before the body: an unauthenticated request costs nothing
        if refusal is not None:
            return refusal
        events = await _json_events()
        if isinstance(events, Response):
            return events
        if len(events) > MAX_EVENTS_PER_DELIVERY:
            # Event Grid's default batch is one event (docs/deployment.md keeps it so).
            logger.warning(
                "incomingCall: %d events in one delivery (limit %d): refused with 413",
                len(events),
                MAX_EVENTS_PER_DELIVERY,
            )
            return Response("too many events in one delivery\n", 413)
        validation: str | None = None
        redeliver = False
        for item in decode_event_grid(events):
            if isinstance(item, ValidationRequest):
                logger.info("Event Grid subscription validation (event %s)", clip(item.event_id))
                validation = validation or item.validation_code
            elif isinstance(item, IncomingCall):
                # Without JWKS keys no media socket could be verified: 503, not an answer.
                keys = rt.verifier is not None and rt.verifier.loaded
                plane = rt.plane
                outcome = (
                    await plane.admit_anywhere(item)
                    if plane is not None and keys
                    else Admission.NOT_READY
                )
                redeliver = redeliver or outcome.redeliver
                if rt.metrics is not None:
                    rt.metrics.incoming(outcome)
                log = (
                    logger.info
                    if outcome in {Admission.ANSWERING, Admission.DUPLICATE}
                    else logger.warning
                )
                log(
                    "IncomingCall event=%s corr=%s server_call_id=%s caller=%s: %s",
                    clip(item.event_id),
                    clip(item.correlation_id or "-"),
                    clip(item.server_call_id or "-"),
                    clip(item.caller),
                    outcome,
                )
            else:
                _log_skipped("incomingCall", item)
        if validation is not None:
            return {"validationResponse": validation}
        if redeliver:
            # Event Grid retries 503 (never a 2xx), maybe on another instance; the duplicate
            # memory holds only admitted calls, so the ones answered now are not answered twice.
            return Response("not accepting calls right now\n", 503, headers={"Retry-After": "5"})
        return Response("", 200)

    @app.post("/api/callbacks/<token>")
    async def callbacks(token: str) -> Response:
        known = rt.plane is not None and rt.plane.knows_token(token)
        refusal = await rt.authenticate(request.headers.get("Authorization"), known_call=known)
        if refusal is not None:
            return refusal
        events = await _json_events()
        if isinstance(events, Response):
            return events
        if rt.plane is not None:
            # Shared state: a call run by another instance is forwarded to it, before the
            # known / recently-ended check below would answer 404.
            try:
                if await rt.plane.route_callbacks(token, events):
                    return Response("", 200)
            except StateUnavailable as exc:
                logger.warning("%s refused: %s", request_path(), exc)
                return Response("shared state unavailable\n", 503)
        found = known or (rt.plane is not None and rt.plane.recently_ended(token))
        for item in decode_callbacks(events):
            if isinstance(item, Skipped):
                _log_skipped(request_path(), item)
            elif rt.plane is not None:
                found = rt.plane.on_callback(token, item) and found
        if not found:
            return Response("unknown call\n", 404)
        return Response("", 200)

    @app.websocket("/ws/<token>")
    async def media(token: str) -> Response | None:
        ws = cast(MediaWebsocket, cast(Any, websocket)._get_current_object())
        plane = rt.plane
        if plane is None:
            return Response("not ready\n", 503)
        try:
            # Before any JWKS work: junk URLs cost nothing (one Redis GET when shared).
            known = await plane.knows_media_token(token)
        except StateUnavailable as exc:
            logger.warning("%s refused: %s", request_path(), exc)
            return Response("shared state unavailable\n", 503)
        if not known:
            logger.warning("%s refused: unknown or finished call token", request_path())
            return Response("forbidden\n", 403)
        # docs/protocols/acs.md §5.2: the doc's prose says "Authentication header", its sample reads
        # Authorization; take either.
        authorization = ws.headers.get("Authorization") or ws.headers.get("Authentication")
        try:
            await rt.verify_jwt(authorization, known_call=True)
        except KeysUnavailable as exc:
            # §5.2: a failed check is refused (HTTP 401 below); "other errors" close with 1011.
            logger.warning("%s refused with close 1011: %s", request_path(), exc)
            with contextlib.suppress(
                UnexpectedMessageError, RuntimeError, trio.BrokenResourceError
            ):
                await ws.accept()
                await ws.close(1011, "cannot verify tokens right now")
            return None
        except AuthError as exc:
            logger.warning("%s refused: %s", request_path(), exc)
            return Response("unauthorized\n", 401)
        record = await plane.claim_media_anywhere(
            token, ws.headers.get("x-ms-call-connection-id", "")
        )
        if isinstance(record, str):
            logger.warning("%s refused: %s", request_path(), record)
            return Response("forbidden\n", 403)
        if "permessage-deflate" in ws.headers.get("Sec-WebSocket-Extensions", ""):
            # Declined at the handshake (hypercorn_ws.decline_permessage_deflate): CPU for little gain.
            logger.info("%s ACS offered permessage-deflate; declined", record.ids)
        resumed = record.media_sockets > 0
        record.media_sockets += 1
        logger.info(
            "%s media socket %s (x-ms-call-correlation-id=%s)",
            record.ids,
            "re-established" if resumed else "connected",
            clip(ws.headers.get("x-ms-call-correlation-id", "-")),
        )
        # A resumed call has been greeted already.
        agent = replace(settings.agent, greeting=None) if resumed else settings.agent
        try:
            # Inside the try: a failed or cancelled accept must still report media_done.
            # The scope: a socket re-established while this one lingers may cancel it.
            with trio.CancelScope() as record.media_scope:
                await ws.accept()
                record.summary = await observed_runner(
                    QuartMediaSocket(ws),
                    rt.connect_model if record.predial is None else record.predial.connector(),
                    handle=record.handle,
                    agent=agent,
                    limits=settings.limits,
                    tools=rt.tools,
                    actions=settings.actions,
                )
        finally:
            record.media_done.set()
        return None

    if settings.softphone is not None:
        # Off by default: SOFTPHONE=1 adds the page, behind the token in its URL.
        # Browser calls take MAX_CONCURRENT_CALLS slots too (the plane counts them as well).
        rt.softphone = SoftphoneCalls(full=lambda: not rt.ready)
        install_softphone(
            app,
            settings,
            settings.softphone,
            rt.softphone,
            connect_model=lambda: rt.connect_model,
            run_call=observed_runner,
            tools=rt.tools,
        )
        # Never the whole token in a log line: the operator knows it (SOFTPHONE_TOKEN).
        logger.warning(
            "SOFTPHONE=1: the browser softphone is on at %s/softphone/%s…/ "
            "(SOFTPHONE_TOKEN is its only credential)",
            settings.require_acs().public_base_url.rstrip("/"),
            settings.softphone.token[:4],
        )
    return app


def _log_skipped(where: str, item: Skipped) -> None:
    logger.warning(
        "%s: event %s (%s) ignored: %s",
        where,
        clip(item.event_id),
        clip(item.event_type),
        clip(item.reason, 200),
    )
