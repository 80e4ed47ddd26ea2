"""Settings a new user gets wrong: each one is one line on stderr naming what to fix, rc 2.

And a model that cannot be reached or refuses us is a WARNING with the real cause, not an INFO
line saying ``HandshakeError()``.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterator
from contextlib import asynccontextmanager

import pytest
import trio

from acs_trio.call.bridge import run_call
from acs_trio.call.lifecycle import CallHandle, CallIds, CallSummary, EndReason
from acs_trio.call.model_socket import ModelConnector
from acs_trio.config import AgentSettings, CallLimits, ModelEndpoint, Settings
from acs_trio.control import server
from acs_trio.control.model_ws import open_model
from acs_trio.errors import ModelRejected
from tests.fakes import FakeAcs, TrioMediaSocket, open_ws_pair, record

GOOD = {
    "ACS_CONNECTION_STRING": "endpoint=https://res.communication.azure.com/;accesskey=c2VjcmV0",
    "PUBLIC_BASE_URL": "https://bot.example.com",
    "ACS_RESOURCE_ID": "6b0c6a0e-0000-4000-8000-000000000000",
    "REALTIME_URL": "ws://127.0.0.1:9/v1/realtime",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name, value in GOOD.items():
        monkeypatch.setenv(name, value)
    for name in ("HOST", "PORT", "OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield monkeypatch
    # prepare() installs the server's own handler: put pytest's back.
    root.handlers[:] = handlers
    root.setLevel(level)


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.strip()


def test_port_in_use_is_one_line(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env.setenv("HOST", "127.0.0.1")
        env.setenv("PORT", str(port))
        assert server.main([]) == 2
    line = one_line(capsys)
    assert line.startswith(f"acs-trio serve: cannot listen on 127.0.0.1:{port} (HOST/PORT): ")
    assert "in use" in line
    assert "PORT" in line


def test_unresolvable_host_is_one_line(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("HOST", "nonexistent.invalid")
    assert server.main(["--port", "0"]) == 2
    line = one_line(capsys)
    assert "cannot listen on nonexistent.invalid:0" in line
    assert "HOST='nonexistent.invalid' does not resolve" in line


def test_arm_resource_path_asks_for_the_immutable_guid(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv(
        "ACS_RESOURCE_ID",
        "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Communication/"
        "communicationServices/my-acs",
    )
    assert server.main([]) == 2
    line = one_line(capsys)
    assert line.startswith("acs-trio serve: ACS_RESOURCE_ID=")
    assert "Immutable Resource ID, a GUID" in line


def test_accesskey_that_is_not_base64_is_refused(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("ACS_CONNECTION_STRING", "endpoint=https://r.test/;accesskey=not base64!!")
    assert server.main([]) == 2
    assert "accesskey is not base64" in one_line(capsys)


def test_quoted_values_from_a_docker_env_file_are_unquoted_with_a_warning(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("ACS_CONNECTION_STRING", f'"{GOOD["ACS_CONNECTION_STRING"]}"')
    env.setenv("PUBLIC_BASE_URL", "'https://bot.example.com'")
    launch = server.prepare(["--port", "0"])
    assert isinstance(launch, server.Launch)
    acs = launch.settings.require_acs()
    assert acs.connection_string == GOOD["ACS_CONNECTION_STRING"]
    assert acs.public_base_url == "https://bot.example.com"
    warnings = [line for line in capsys.readouterr().err.splitlines() if " WARNING " in line]
    assert len(warnings) == 2
    assert 'ACS_CONNECTION_STRING: removed the surrounding " quotes' in warnings[0]
    assert "PUBLIC_BASE_URL: removed the surrounding ' quotes" in warnings[1]
    assert all("docker --env-file keeps quotes literally" in line for line in warnings)


def test_a_lost_bind_race_is_still_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    async def fails_to_bind() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            raise OSError(errno.EADDRINUSE, "Address already in use")

    launch = server.Launch(Settings(), "0.0.0.0", 8000)
    assert server.run_server(fails_to_bind, launch) == 2
    line = one_line(capsys)
    assert line.startswith("acs-trio serve: cannot listen on 0.0.0.0:8000 (HOST/PORT): ")


#: No reconnect attempts: the first failure ends the call (the reconnect policy is tested elsewhere).
NO_RETRY = CallLimits(model_reconnect_budget_s=0)


async def call_with_connector(nursery: trio.Nursery, connect: ModelConnector) -> CallSummary:
    acs_client, acs_server = await open_ws_pair(nursery)
    nursery.start_soon(record, acs_client, FakeAcs(acs_client).seen)
    return await run_call(
        TrioMediaSocket(acs_server),
        connect,
        handle=CallHandle(CallIds("c")),
        agent=AgentSettings(greeting=None),
        limits=NO_RETRY,
    )


async def test_unreachable_model_is_a_warning_with_its_cause(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = ModelEndpoint(url=f"ws://127.0.0.1:{port}/v1/realtime")

    def connect():  # type: ignore[no-untyped-def]
        return open_model(endpoint, NO_RETRY)

    summary = await call_with_connector(nursery, connect)
    assert summary.end_reason is EndReason.MODEL_CONNECT_FAILED
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    [ending] = [text for text in warnings if "ending call: model_connect_failed" in text]
    assert f"127.0.0.1:{port}: connection refused" in ending


async def test_rejecting_model_is_a_warning_with_its_status(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    @asynccontextmanager
    async def refused():  # type: ignore[no-untyped-def]
        raise ModelRejected(
            "azure-openai refused the WebSocket handshake: HTTP 401", status_code=401
        )
        yield

    summary = await call_with_connector(nursery, refused)
    assert summary.end_reason is EndReason.MODEL_CONNECT_FAILED
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("HTTP 401" in text for text in warnings)
