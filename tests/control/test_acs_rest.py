"""The ACS SDK's aio client running on Trio over httpx: exact wire bodies and error translation."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from acs_trio.control.acs_rest import open_acs_rest
from acs_trio.errors import AcsRestError

CONNECTION_STRING = "endpoint=https://acs.test/;accesskey=" + "QUJDRA==" * 4


def answered(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "callConnectionId": "conn-1",
            "serverCallId": "server-1",
            "correlationId": "corr-1",
            "callConnectionState": "connecting",
        },
    )


async def test_answer_call_sends_the_documented_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answered(request)

    async with open_acs_rest(CONNECTION_STRING, transport=httpx.MockTransport(handler)) as rest:
        call = await rest.answer_call(
            "ctx-1",
            callback_url="https://me.test/api/callbacks/t",
            transport_url="wss://me.test/ws/t",
        )

    assert (call.call_connection_id, call.server_call_id, call.correlation_id) == (
        "conn-1",
        "server-1",
        "corr-1",
    )
    [request] = seen
    assert request.method == "POST"
    assert request.url.path == "/calling/callConnections:answer"
    assert request.url.params["api-version"]
    assert request.headers["authorization"].startswith("HMAC-SHA256 ")
    # docs/protocols/acs.md §2.2/§2.3
    assert json.loads(request.content) == {
        "incomingCallContext": "ctx-1",
        "callbackUri": "https://me.test/api/callbacks/t",
        "mediaStreamingOptions": {
            "transportUrl": "wss://me.test/ws/t",
            "transportType": "websocket",
            "contentType": "audio",
            "audioChannelType": "mixed",
            "startMediaStreaming": True,
            "enableBidirectional": True,
            "audioFormat": "pcm24KMono",
            "enableDtmfTones": True,  # §2.3: DtmfData on the media socket (DTMF_ENABLED)
        },
    }


async def test_hang_up_terminates_for_everyone() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    async with open_acs_rest(CONNECTION_STRING, transport=httpx.MockTransport(handler)) as rest:
        await rest.hang_up("conn-1")
    [request] = seen
    assert (request.method, request.url.path) == (
        "POST",
        "/calling/callConnections/conn-1:terminate",
    )


@pytest.mark.parametrize(
    ("target", "identifier"),
    [
        ("+14255550199", {"rawId": "4:+14255550199", "phoneNumber": {"value": "+14255550199"}}),
        (
            "8:acs:res_agent-7",
            {"rawId": "8:acs:res_agent-7", "communicationUser": {"id": "8:acs:res_agent-7"}},
        ),
    ],
)
async def test_transfer_names_the_target_and_operation_context(
    target: str, identifier: dict[str, object]
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"operationContext": "transfer-1"})

    async with open_acs_rest(CONNECTION_STRING, transport=httpx.MockTransport(handler)) as rest:
        await rest.transfer_call_to_participant("conn-1", target, operation_context="transfer-1")
    [request] = seen
    assert (request.method, request.url.path) == (
        "POST",
        "/calling/callConnections/conn-1:transferToParticipant",
    )
    body = json.loads(request.content)
    assert body["operationContext"] == "transfer-1"
    assert body["targetParticipant"] == identifier


async def test_answer_without_dtmf_leaves_the_tones_off() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answered(request)

    async with open_acs_rest(CONNECTION_STRING, transport=httpx.MockTransport(handler)) as rest:
        await rest.answer_call(
            "ctx-1",
            callback_url="https://x/cb",
            transport_url="wss://x/ws",
            enable_dtmf_tones=False,
        )
    assert json.loads(seen[0].content)["mediaStreamingOptions"]["enableDtmfTones"] is False


async def test_stale_context_becomes_acs_rest_error_with_status_and_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {
            "error": {
                "code": "8523",
                "message": "lifetime validation of the signed http request failed",
            }
        }
        return httpx.Response(400, json=body)

    async with open_acs_rest(CONNECTION_STRING, transport=httpx.MockTransport(handler)) as rest:
        with pytest.raises(AcsRestError, match="HTTP 400 8523: lifetime validation") as caught:
            await rest.answer_call("old", callback_url="https://x/cb", transport_url="wss://x/ws")
    assert caught.value.status_code == 400


async def test_network_errors_become_acs_rest_error_without_status() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with open_acs_rest(CONNECTION_STRING, transport=httpx.MockTransport(handler)) as rest:
        with pytest.raises(AcsRestError, match="ServiceRequestError") as caught:
            await rest.hang_up("conn-1")
    assert caught.value.status_code is None


async def test_503_is_retried_after_a_trio_sleep(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(trio.current_time())
        if len(seen) == 1:
            return httpx.Response(503, headers={"Retry-After": "2"})
        return httpx.Response(204)

    async with open_acs_rest(CONNECTION_STRING, transport=httpx.MockTransport(handler)) as rest:
        await rest.hang_up("conn-1")
    # azure-core's retry policy backed off on the (mock) Trio clock: no asyncio anywhere.
    assert len(seen) == 2
    assert seen[1] - seen[0] == 2


async def test_get_json_reports_http_errors() -> None:
    async with open_acs_rest(
        None, transport=httpx.MockTransport(lambda r: httpx.Response(404))
    ) as rest:
        with pytest.raises(AcsRestError, match="404") as caught:
            await rest.get_json("https://keys.test/")
        assert caught.value.status_code == 404
        with pytest.raises(AcsRestError, match="no ACS connection string"):
            await rest.hang_up("conn-1")
