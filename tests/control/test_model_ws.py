"""The production model connector over real loopback sockets (real time, no mock clock)."""

from __future__ import annotations

import gc
from dataclasses import replace
from functools import partial

import pytest
import trio
from trio_websocket import WebSocketRequest, serve_websocket

from acs_trio.config import CallLimits, ModelEndpoint
from acs_trio.control.model_ws import model_connector, retry_after
from acs_trio.errors import ModelClosed, ModelConnectError, ModelRejected

LIMITS = replace(CallLimits(), model_connect_timeout_s=5, close_timeout_s=1)


async def test_connects_with_the_endpoint_headers(nursery: trio.Nursery) -> None:
    seen: list[tuple[str, dict[str, str]]] = []

    async def handler(request: WebSocketRequest) -> None:
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        seen.append((request.path, headers))
        ws = await request.accept()
        await ws.send_message('{"type": "session.created", "session": {}}')
        await ws.get_message()

    server = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", 0, None))
    endpoint = ModelEndpoint(
        url=f"ws://127.0.0.1:{server.port}/openai/v1/realtime?model=dep",
        headers=(("api-key", "secret"),),
        provider="azure-openai",
    )
    with trio.fail_after(5):
        async with model_connector(endpoint, LIMITS)() as ws:
            assert await ws.receive() == '{"type": "session.created", "session": {}}'
            await ws.send("bye")
    path, headers = seen[0]
    assert path == "/openai/v1/realtime?model=dep"
    assert headers["api-key"] == "secret"
    assert "openai-beta" not in headers


# trio-websocket 0.12 raises ConnectionRejected from its reader task without closing the client
# stream; CPython closes the socket as soon as the connection object is dropped, which is
# reported as an "unclosed socket" ResourceWarning.  Not ours to fix; noted in docs/architecture.md.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_handshake_refusal_becomes_model_rejected(nursery: trio.Nursery) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.reject(401, body=b'{"error": "bad key"}')

    server = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", 0, None))
    endpoint = ModelEndpoint(url=f"ws://127.0.0.1:{server.port}/v1/realtime")
    with trio.fail_after(5), pytest.raises(ModelRejected, match="HTTP 401") as info:
        async with model_connector(endpoint, LIMITS)():
            pass
    assert info.value.status_code == 401


async def test_nobody_listening_becomes_model_connect_error() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    endpoint = ModelEndpoint(url=f"ws://127.0.0.1:{port}/v1/realtime")
    with trio.fail_after(5), pytest.raises(ModelConnectError):
        async with model_connector(endpoint, LIMITS)():
            pass


# After a close started by the server, trio-websocket 0.12 leaves the client's socket object to the
# garbage collector (same library limit as above; docs/architecture.md).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_close_from_the_model_becomes_model_closed_with_its_code(
    nursery: trio.Nursery,
) -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.aclose(1011, "server error")

    server = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", 0, None))
    endpoint = ModelEndpoint(url=f"ws://127.0.0.1:{server.port}/v1/realtime")
    with trio.fail_after(5):
        async with model_connector(endpoint, LIMITS)() as ws:
            with pytest.raises(ModelClosed, match="1011") as info:
                await ws.receive()
            with pytest.raises(ModelClosed):
                await ws.send("{}")
            await ws.close(1000, "done")  # closing a closed socket is not an error
    assert info.value.code == 1011
    del info
    gc.collect()  # trio-websocket 0.12 leaves this client socket to the GC: reported here


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_rate_limited_handshake_carries_retry_after(nursery: trio.Nursery) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.reject(429, extra_headers=[(b"Retry-After", b"7")], body=b"slow down")

    server = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", 0, None))
    endpoint = ModelEndpoint(url=f"ws://127.0.0.1:{server.port}/v1/realtime")
    with trio.fail_after(5), pytest.raises(ModelRejected, match="HTTP 429") as info:
        async with model_connector(endpoint, LIMITS)():
            pass
    assert (info.value.status_code, info.value.retry_after_s) == (429, 7.0)
    del info
    gc.collect()


def test_retry_after_forms() -> None:
    assert retry_after(((b"retry-after", b"12"),)) == 12.0
    assert retry_after(((b"Retry-After", b"Wed, 21 Oct 2015 07:28:00 GMT"),)) == 0.0  # past
    assert retry_after(((b"Retry-After", b"soon"),)) is None
    assert retry_after(((b"content-type", b"text/plain"),)) is None
    assert retry_after(None) is None


async def test_ping_returns_on_the_pong(nursery: trio.Nursery) -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.get_message()  # trio-websocket answers pings while reading

    server = await nursery.start(partial(serve_websocket, handler, "127.0.0.1", 0, None))
    endpoint = ModelEndpoint(url=f"ws://127.0.0.1:{server.port}/v1/realtime")
    with trio.fail_after(5):
        async with model_connector(endpoint, LIMITS)() as ws:
            await ws.ping()
            await ws.send("bye")
