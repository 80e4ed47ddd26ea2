"""The fake ACS proves the server's real paths: its JWTs verify like ACS's, and its REST endpoint
accepts only requests signed by the SDK's HMAC policy."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os

import httpx
import jwt
import pytest
import trio
from azure.communication.callautomation import (
    AudioFormat,
    MediaStreamingAudioChannelType,
    MediaStreamingContentType,
    MediaStreamingOptions,
    StreamingTransportType,
)
from azure.communication.callautomation._shared.policy import HMACCredentialsPolicy
from azure.communication.callautomation.aio import CallAutomationClient
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.pipeline.transport import HttpRequest

from acs_trio.errors import AuthError
from acs_trio.testing.acs import open_simulated_acs
from acs_trio.testing.acs.hmac_auth import verify_hmac_request
from acs_trio.testing.acs.registry import SimCall
from acs_trio.testing.tokens import OFFICIAL_ISSUER, TokenSigner

ACCESS_KEY = base64.b64encode(os.urandom(32)).decode()
URL = "https://127.0.0.1:4443/calling/callConnections:answer?api-version=2026-03-12"


def test_jwt_verifies_with_pyjwt_against_the_jwks() -> None:
    signer = TokenSigner(audience="resource-guid")
    token = signer.sign(300)
    [jwk] = signer.jwks()["keys"]
    assert (jwk["kid"], jwk["alg"], jwk["use"], jwk["kty"]) == (signer.kid, "RS256", "sig", "RSA")
    assert jwt.get_unverified_header(token)["kid"] == signer.kid
    key = jwt.PyJWK(jwk).key
    claims = jwt.decode(
        token, key, algorithms=["RS256"], issuer=OFFICIAL_ISSUER, audience="resource-guid"
    )
    assert claims["exp"] - claims["iat"] == 300
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, key, algorithms=["RS256"], issuer=OFFICIAL_ISSUER, audience="other")


def test_expired_jwt_is_refused() -> None:
    signer = TokenSigner(audience="r")
    token = signer.sign(300, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    key = jwt.PyJWK(signer.jwks()["keys"][0]).key
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(token, key, algorithms=["RS256"], issuer=OFFICIAL_ISSUER, audience="r")


def test_rotation_publishes_the_new_key_and_keeps_the_old_one() -> None:
    signer = TokenSigner(audience="r")
    first_kid, before = signer.kid, signer.sign()
    second_kid = signer.rotate()
    after = signer.sign()
    keys = {jwk["kid"]: jwt.PyJWK(jwk).key for jwk in signer.jwks()["keys"]}
    assert set(keys) == {first_kid, second_kid} and first_kid != second_kid
    assert jwt.get_unverified_header(after)["kid"] == second_kid
    for token in (before, after):  # a token signed before the rotation still verifies
        kid = jwt.get_unverified_header(token)["kid"]
        jwt.decode(token, keys[kid], algorithms=["RS256"], issuer=OFFICIAL_ISSUER, audience="r")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(before, keys[second_kid], algorithms=["RS256"], audience="r")
    assert signer.fetches == 1


def sdk_signed(body: dict[str, object], key: str = ACCESS_KEY) -> HttpRequest:
    """A request signed by the SDK's own HMACCredentialsPolicy, exactly as the aio client does."""
    request = HttpRequest("POST", URL)
    request.set_json_body(body)
    HMACCredentialsPolicy("https://127.0.0.1:4443", key).on_request(
        PipelineRequest(request, PipelineContext(None))
    )
    return request


def verify(request: HttpRequest, *, body: bytes | None = None) -> None:
    headers = {k.lower(): v for k, v in request.headers.items()} | {"host": "127.0.0.1:4443"}
    verify_hmac_request(
        method="POST",
        path_and_query="/calling/callConnections:answer?api-version=2026-03-12",
        headers=headers,
        body=request.body.encode() if body is None else body,
        access_key=ACCESS_KEY,
    )


def test_hmac_signed_by_the_sdk_policy_verifies() -> None:
    verify(sdk_signed({"incomingCallContext": "x"}))


def test_hmac_with_wrong_key_or_tampered_body_is_refused() -> None:
    other_key = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(AuthError, match="signature"):
        verify(sdk_signed({"a": 1}, key=other_key))
    with pytest.raises(AuthError, match="body"):
        verify(sdk_signed({"a": 1}), body=b'{"a": 2}')


def media_options(fmt: AudioFormat = AudioFormat.PCM24_K_MONO) -> MediaStreamingOptions:
    return MediaStreamingOptions(
        transport_url="wss://server.test/ws/token",
        transport_type=StreamingTransportType.WEBSOCKET,
        content_type=MediaStreamingContentType.AUDIO,
        audio_channel_type=MediaStreamingAudioChannelType.MIXED,
        start_media_streaming=True,
        enable_bidirectional=True,
        audio_format=fmt,
    )


async def test_real_sdk_answers_and_hangs_up_through_the_fake_rest_endpoint() -> None:
    """The aio SDK client, over httpx on Trio, against the HTTPS endpoint with our CA."""
    from acs_trio.control.acs_rest import HttpxTransport  # the server's own transport adapter

    async with open_simulated_acs() as acs:
        call = SimCall(
            incoming_call_context="ctx-1", caller="+14255550001", recipient="+18005550100"
        )
        acs.registry.add(call)
        verify_ctx = acs.tls.client_context()
        async with httpx.AsyncClient(verify=verify_ctx) as http:
            client = CallAutomationClient.from_connection_string(
                acs.connection_string, transport=HttpxTransport(http)
            )
            with trio.fail_after(10):
                props = await client.answer_call(
                    "ctx-1", "https://server.test/api/callbacks/t", media_streaming=media_options()
                )
                assert props.call_connection_id == call.call_connection_id
                assert props.call_connection_state == "connecting"
                assert props.correlation_id == call.correlation_id
                await call.answered.wait()  # set once the reply is on its way back
                assert call.answer is not None
                assert call.answer.audio_format == "pcm24KMono"
                assert call.answer.transport_url == "wss://server.test/ws/token"

                with pytest.raises(HttpResponseError) as refused:  # the context is single-use
                    await client.answer_call(
                        "ctx-1", "https://server.test/cb", media_streaming=media_options()
                    )
                assert refused.value.status_code == 400

                connection = client.get_call_connection(call.call_connection_id)
                await connection.hang_up(is_for_everyone=True)
                assert call.hung_up.is_set()
                assert call.hang_up_via == "terminate (hang_up for everyone)"
                await client.close()

            # A wrong access key never gets past the signature check.
            wrong = acs.connection_string.replace(
                acs.access_key, base64.b64encode(b"k" * 32).decode()
            )
            bad_client = CallAutomationClient.from_connection_string(
                wrong, transport=HttpxTransport(http)
            )
            with trio.fail_after(10), pytest.raises(HttpResponseError) as unauthorized:
                await bad_client.answer_call(
                    "ctx-1", "https://server.test/cb", media_streaming=media_options()
                )
            assert unauthorized.value.status_code == 401
            await bad_client.close()

            with trio.fail_after(10):
                keys = await http.get(acs.jwks_url)
            assert json.loads(keys.content)["keys"][0]["kid"] == acs.signer.kid
