"""``GET /metrics`` through the app: admission, HTTP statuses, live calls, model connects."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from acs_trio.config import Observability
from acs_trio.control.app import create_app
from acs_trio.control.metrics import Metrics
from acs_trio.control.observe import instrument_connector
from acs_trio.errors import ModelConnectError, ModelRejected
from tests.acs_service import FakeAcsService, callback_event, incoming_call_event
from tests.control.test_app import Harness, _harness, settings


async def scrape(h: Harness) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await h.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = (await response.get_data()).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_count_admissions_requests_and_live_calls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _harness(max_calls=1) as h:
        await h.incoming(incoming_call_event("e-1", "ctx-1"))
        await h.incoming(incoming_call_event("e-1", "ctx-1"))  # redelivered
        await h.incoming(incoming_call_event("e-2", "ctx-2"))  # over capacity
        await h.client.post("/api/callbacks/nope", json=[])  # no JWT
        got = await scrape(h)
        assert got[("acs_trio_live_calls", ())] == 1
        assert got[("acs_trio_incoming_calls_total", (("outcome", "answering"),))] == 1
        assert got[("acs_trio_incoming_calls_total", (("outcome", "duplicate"),))] == 1
        assert got[("acs_trio_incoming_calls_total", (("outcome", "full"),))] == 1
        route = ("route", "/api/incomingCall")
        assert got[("acs_trio_http_requests_total", (route, ("status", "200")))] == 3
        callbacks = ("route", "/api/callbacks/<token>")
        assert got[("acs_trio_http_requests_total", (callbacks, ("status", "401")))] == 1
        assert ("acs_trio_event_loop_lag_seconds_count", ()) in got
        # Tools are not wired yet: the series exist only once a tool runs (labels by tool).
        assert not any(name.startswith("acs_trio_tool_calls") for name, _ in got)
        token = h.acs.token_of(1)
        async with h.client.websocket(f"/ws/{token}", headers=h.auth()):
            pass  # the caller hangs up at once
        await h.callback(token, callback_event("CallDisconnected", "conn-1"))
        got = await scrape(h)
        assert got[("acs_trio_live_calls", ())] == 0


async def test_two_apps_have_separate_registries() -> None:
    one = create_app(settings(), http_transport=FakeAcsService().transport)
    two = create_app(settings(), http_transport=FakeAcsService().transport)
    m1, m2 = one.extensions["acs_trio"].metrics, two.extensions["acs_trio"].metrics
    m1.incoming("answering")
    assert b'acs_trio_incoming_calls_total{outcome="answering"} 1.0' in m1.expose()
    assert b'outcome="answering"' not in m2.expose()


async def test_metrics_can_be_switched_off() -> None:
    off = replace(settings(), observability=Observability(metrics_enabled=False))
    app = create_app(off, http_transport=FakeAcsService().transport)
    async with app.test_app() as test_app:
        assert (await test_app.test_client().get("/metrics")).status_code == 404


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (ModelRejected("HTTP 401", status_code=401), "http_401"),
        (ModelRejected("HTTP 503", status_code=503), "http_5xx"),
        (ModelConnectError("no route", cause="dns"), "dns"),
    ],
)
async def test_model_connect_time_and_failures_by_cause(error: Exception, cause: str) -> None:
    metrics = Metrics()

    @asynccontextmanager
    async def failing():  # type: ignore[no-untyped-def]
        raise error
        yield

    with pytest.raises(type(error)):
        async with instrument_connector(failing, metrics)():
            pass
    text = metrics.expose().decode()
    assert f'acs_trio_model_connect_failures_total{{cause="{cause}"}} 1.0' in text
    assert "acs_trio_model_connect_seconds_count 0.0" in text
