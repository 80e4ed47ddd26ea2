"""Prometheus metrics: one :class:`Metrics` per app, in its own ``CollectorRegistry``.

Every series and the questions it answers are in docs/operations.md.  Label values come from
closed sets (end reasons, admission outcomes, failure causes, route patterns, HTTP statuses, a
capped set of tool names): never a call id, a token or a caller number, so the number of series
is bounded whatever the traffic.

Per-call numbers arrive through :class:`CallMetrics`, the call's
:class:`~acs_trio.call.observer.CallObserver`: time to first audio and barge-ins as they happen,
everything else from the final :class:`~acs_trio.call.lifecycle.CallSummary`.  The per-frame hooks
are no-ops here: metrics cost nothing per audio frame.

**Tool calls** (the hook for the tools code): call ``observer.on_tool_call(name, ok, ms, at)`` on
the call's observer — the bridge has it as ``self.observer`` — or, outside a call,
:meth:`Metrics.tool_call`.  The series ``acs_trio_tool_calls_total`` and
``acs_trio_tool_call_seconds`` exist from start-up and stay at zero until a tool runs.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from ..call.lifecycle import CallHandle, CallIds, CallSummary, EndReason
from ..call.observer import NullObserver
from ..errors import ModelConnectError, ModelRejected

__all__ = ["CONTENT_TYPE_LATEST", "CallMetrics", "Metrics", "model_failure_cause"]

#: Voice latencies: 5 ms (a barge-in on an idle server) to 10 s (a stuck model).
VOICE_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
)  # fmt: skip
#: Event-loop lag: 0.5 ms (healthy) to 1 s (saturated).
LAG_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
#: Call duration: 5 s to 2 h.
DURATION_BUCKETS_S = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
#: Teardown (end requested → every task of the call done): 1 ms to 30 s.
TEARDOWN_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: Distinct tool names kept as label values; others are counted as "(other)".
MAX_TOOL_NAMES = 32
_HTTP_STATUSES = {400, 401, 403, 404, 408, 429}


def model_failure_cause(exc: BaseException) -> str:
    """A bounded label for a failed model connect: ``http_401``, ``http_5xx``, ``dns``, …"""
    if isinstance(exc, ModelRejected):
        status = exc.status_code
        if status in _HTTP_STATUSES:
            return f"http_{status}"
        return "http_5xx" if status >= 500 else "http_other"
    if isinstance(exc, ModelConnectError):
        return exc.cause
    return "other"


class Metrics:
    """All series of one app; :meth:`expose` renders them for ``GET /metrics``."""

    def __init__(self) -> None:
        # No ``*_created`` series: a start timestamp per label set doubles the scrape for nothing
        # (Prometheus ignores them in the text format).  prometheus-client has only this global
        # switch; the process exports nothing else.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry = CollectorRegistry()
        self.live_calls = Gauge(
            "acs_trio_live_calls",
            "Calls registered now (answering or connected).",
            registry=registry,
        )
        self.incoming_calls = Counter(
            "acs_trio_incoming_calls",
            "IncomingCall events by admission outcome (answering, duplicate, full, draining, not_ready).",
            ["outcome"],
            registry=registry,
        )
        self.calls_ended = Counter(
            "acs_trio_calls_ended", "Calls ended, by end reason.", ["reason"], registry=registry
        )
        self.call_duration = Histogram(
            "acs_trio_call_duration_seconds",
            "Call duration (media socket connected to the call's end).",
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )
        self.ttfa = Histogram(
            "acs_trio_time_to_first_audio_seconds",
            "Model speech_stopped (kind=turn) or session ready (kind=greeting) to the first agent "
            "frame written to ACS.",
            ["kind"],
            buckets=VOICE_BUCKETS_S,
            registry=registry,
        )
        self.barge_in = Histogram(
            "acs_trio_barge_in_latency_seconds",
            "Model speech_started to StopAudio written to ACS.",
            buckets=VOICE_BUCKETS_S,
            registry=registry,
        )
        self.truncate_error = Histogram(
            "acs_trio_truncate_error_seconds",
            "At a barge-in: agent audio written but estimated not yet played, which StopAudio "
            "flushed; the truncate's audio_end_ms overstates what the caller heard by this much.",
            buckets=VOICE_BUCKETS_S,
            registry=registry,
        )
        self.teardown = Histogram(
            "acs_trio_call_teardown_seconds",
            "From the first end request to every task of the call finished (sockets closed).",
            buckets=TEARDOWN_BUCKETS_S,
            registry=registry,
        )
        self.turns = Counter(
            "acs_trio_turns", "Caller turns (model speech_stopped).", registry=registry
        )
        self.model_connect = Histogram(
            "acs_trio_model_connect_seconds",
            "Time to open the model WebSocket (TCP, TLS and handshake).",
            buckets=VOICE_BUCKETS_S,
            registry=registry,
        )
        self.model_connect_failures = Counter(
            "acs_trio_model_connect_failures",
            "Model connects that failed, by cause (http_<status>, http_5xx, dns, refused, tls, "
            "timeout, network).",
            ["cause"],
            registry=registry,
        )
        self.model_errors = Counter(
            "acs_trio_model_error_events", "Realtime 'error' events received.", registry=registry
        )
        self.tool_calls = Counter(
            "acs_trio_tool_calls",
            "Tool calls by tool and outcome (ok, failed); zero until tools run.",
            ["tool", "outcome"],
            registry=registry,
        )
        self.tool_seconds = Histogram(
            "acs_trio_tool_call_seconds",
            "Tool call duration.",
            ["tool"],
            buckets=VOICE_BUCKETS_S,
            registry=registry,
        )
        self.webhook_requests = Counter(
            "acs_trio_http_requests",
            "HTTP requests by route pattern and status (webhooks, health, metrics).",
            ["route", "status"],
            registry=registry,
        )
        self.loop_lag = Histogram(
            "acs_trio_event_loop_lag_seconds",
            "How late a periodic Trio task wakes after its deadline.",
            buckets=LAG_BUCKETS_S,
            registry=registry,
        )
        self.channel_waits = Counter(
            "acs_trio_channel_waits",
            "Times a bounded channel was full and its producer waited (inbound: caller audio to "
            "the model; outbound: agent audio to the caller).",
            ["channel"],
            registry=registry,
        )
        self.recording_dropped = Counter(
            "acs_trio_recording_dropped_chunks",
            "Recording chunks dropped because the writer thread fell behind (disk too slow).",
            registry=registry,
        )
        self._tools: set[str] = set()
        # Series that exist from start-up at zero, so rate() and absent() work from the start.
        for reason in EndReason:
            self.calls_ended.labels(reason=reason.value)
        for channel in ("inbound", "outbound"):
            self.channel_waits.labels(channel=channel)
        for kind in ("turn", "greeting"):
            self.ttfa.labels(kind=kind)

    # -- server-level hooks -----------------------------------------------------------------

    def count_live_calls(self, count: Callable[[], int]) -> None:
        self.live_calls.set_function(lambda: float(count()))

    def incoming(self, outcome: str) -> None:
        self.incoming_calls.labels(outcome=outcome).inc()

    def http_request(self, route: str, status: int) -> None:
        self.webhook_requests.labels(route=route, status=str(status)).inc()

    def model_connected(self, seconds: float) -> None:
        self.model_connect.observe(seconds)

    def model_connect_failed(self, exc: BaseException) -> None:
        self.model_connect_failures.labels(cause=model_failure_cause(exc)).inc()

    def tool_call(self, name: str, ok: bool, seconds: float) -> None:
        """One finished tool call (the tools code's hook; see the module docstring)."""
        if name not in self._tools:
            if len(self._tools) >= MAX_TOOL_NAMES:
                name = "(other)"
            else:
                self._tools.add(name)
        self.tool_calls.labels(tool=name, outcome="ok" if ok else "failed").inc()
        self.tool_seconds.labels(tool=name).observe(seconds)

    def call(self, handle: CallHandle) -> CallMetrics:
        return CallMetrics(self, handle)

    def expose(self) -> bytes:
        return generate_latest(self.registry)


class CallMetrics(NullObserver):
    """One call's observer: real-time latencies, then the summary's facts at the end."""

    def __init__(self, metrics: Metrics, handle: CallHandle) -> None:
        self._m = metrics
        self._handle = handle

    def on_start(self, ids: CallIds, started_at: float) -> None:
        pass

    def on_ttfa(self, ms: float, *, greeting: bool) -> None:
        self._m.ttfa.labels(kind="greeting" if greeting else "turn").observe(ms / 1000)

    def on_stop_audio(self, at: float, latency_ms: float, flushed_ms: float) -> None:
        self._m.barge_in.observe(latency_ms / 1000)
        self._m.truncate_error.observe(flushed_ms / 1000)

    def on_tool_call(self, name: str, ok: bool, duration_ms: float, at: float) -> None:
        self._m.tool_call(name, ok, duration_ms / 1000)

    def on_end(self, summary: CallSummary) -> None:
        m = self._m
        m.calls_ended.labels(reason=summary.end_reason.value).inc()
        m.call_duration.observe(summary.duration_s)
        m.turns.inc(summary.turns)
        m.model_errors.inc(summary.model_errors)
        if summary.inbound_waits:
            m.channel_waits.labels(channel="inbound").inc(summary.inbound_waits)
        if summary.outbound_waits:
            m.channel_waits.labels(channel="outbound").inc(summary.outbound_waits)
        asked = self._handle.end_requested_at
        if asked is not None:
            m.teardown.observe(max(0.0, summary.ended_at - asked))
