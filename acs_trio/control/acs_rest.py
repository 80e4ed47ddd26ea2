"""Call Automation REST on Trio: the ACS SDK's aio client over an httpx-backed azure-core transport.

The official ``azure.communication.callautomation.aio`` client is written against azure-core's
``AsyncHttpTransport``; its default transport is aiohttp (asyncio only).  :class:`HttpxTransport`
plugs ``httpx.AsyncClient`` in instead, so every request is plain Trio I/O: no thread per request,
no asyncio loop.  What the pipeline needs from a transport, read in azure-core 1.41:

* ``send(request, *, stream=False, **config)`` receives an ``azure.core.rest.HttpRequest`` (the
  generated operations build only those) and returns an ``azure.core.rest.AsyncHttpResponse``;
  the pipeline then calls ``read()`` on it.  We subclass azure-core's ``AsyncHttpResponseImpl``
  (which brings ``read``/``text``/``iter_bytes`` and the ``body()``/``load_body`` backcompat
  shims) and load the whole body up front: Call Automation answers are small JSON documents.
* ``sleep(duration)``: the retry policy's back-off.  The base class imports asyncio there, so we
  override it with ``trio.sleep`` (the only asyncio use on the request path; the other one,
  ``asyncio.gather`` in ``AsyncPipeline._prepare_multipart``, is only for batch requests).
* httpx errors become azure-core ``ServiceRequestError``/``ServiceResponseError`` inside the
  pipeline (so the retry policy understands them), and everything leaving :class:`AcsRest` is an
  :class:`~acs_trio.errors.AcsRestError` carrying the HTTP status and the ACS error message.

``import httpx`` lives in this module only (the ecosystem may move to httpx2).  ``trust_env=True``
makes httpx honour ``SSL_CERT_FILE`` (a local emulator's CA) and proxy variables.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import trio
from azure.communication.callautomation import (
    AudioFormat,
    CommunicationIdentifier,
    CommunicationUserIdentifier,
    MediaStreamingAudioChannelType,
    MediaStreamingContentType,
    MediaStreamingOptions,
    PhoneNumberIdentifier,
    StreamingTransportType,
)
from azure.communication.callautomation.aio import CallAutomationClient
from azure.core.exceptions import (
    AzureError,
    DeserializationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.transport import AsyncHttpTransport
from azure.core.rest import HttpRequest
from azure.core.rest._http_response_impl_async import AsyncHttpResponseImpl

from .._httpx import httpx
from ..errors import AcsRestError

__all__ = ["AcsRest", "AnsweredCall", "HttpTransport", "HttpxTransport", "open_acs_rest"]

logger = logging.getLogger(__name__)

#: What the SDK raises on a 2xx body it cannot use (``null``, a list, ``"targets": "x"``...):
#: msrest-style deserialisation errors and plain attribute/key/type errors from the models.
#: Nothing but :class:`AcsRestError` may leave :class:`AcsRest`.
_BAD_RESPONSE = (DeserializationError, ValueError, TypeError, AttributeError, KeyError)

#: What ``create_app(http_transport=...)`` accepts: tests pass ``httpx.MockTransport``.
HttpTransport = httpx.AsyncBaseTransport

#: Per-phase httpx timeouts; callers still wrap each whole exchange in ``trio.fail_after``.
_HTTP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
#: A JWKS document or an ACS error body is a few KiB; refuse anything absurd.
_MAX_JSON_BYTES = 1024 * 1024


class _HttpxResponse(AsyncHttpResponseImpl):
    """An ``azure.core.rest.AsyncHttpResponse`` over an already-read ``httpx.Response``."""

    def __init__(self, *, request: HttpRequest, internal_response: httpx.Response) -> None:
        super().__init__(
            request=request,
            internal_response=internal_response,
            status_code=internal_response.status_code,
            headers=internal_response.headers,  # case-insensitive, like azure-core expects
            content_type=internal_response.headers.get("content-type"),
            reason=internal_response.reason_phrase,
            stream_download_generator=_ContentChunks,
        )
        self._content = internal_response.content

    async def close(self) -> None:
        if not self.is_closed:
            self._is_closed = True
            await self._internal_response.aclose()


class _ContentChunks:
    """The ``stream_download`` generator: yields the body we already hold, in block-size chunks."""

    def __init__(self, pipeline: Any, response: _HttpxResponse, **_: Any) -> None:
        content: bytes = response.content
        size = response._block_size
        self._chunks = iter([content[i : i + size] for i in range(0, len(content), size)])

    def __aiter__(self) -> _ContentChunks:
        return self

    async def __anext__(self) -> bytes:
        await trio.lowlevel.checkpoint()
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None


class HttpxTransport(AsyncHttpTransport[HttpRequest, _HttpxResponse]):
    """azure-core transport backed by a caller-owned ``httpx.AsyncClient`` (Trio-native)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def __aenter__(self) -> HttpxTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        return None  # the client belongs to AcsRest, which closes it

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def sleep(self, duration: float) -> None:
        # The base class would ``import asyncio``; retry back-off must be a Trio sleep.
        await trio.sleep(duration)

    async def send(self, request: HttpRequest, **config: Any) -> _HttpxResponse:
        if not isinstance(request, HttpRequest):
            raise TypeError(f"HttpxTransport handles azure.core.rest.HttpRequest, not {request!r}")
        body = request.content
        if isinstance(body, str):
            body = body.encode("utf-8")
        try:
            response = await self._client.request(
                request.method, request.url, headers=dict(request.headers), content=body
            )
        except httpx.TimeoutException as exc:
            error: AzureError = (
                ServiceRequestTimeoutError(str(exc), error=exc)
                if isinstance(exc, httpx.ConnectTimeout)
                else ServiceResponseTimeoutError(str(exc), error=exc)
            )
            raise error from exc
        except (httpx.ConnectError, httpx.UnsupportedProtocol) as exc:
            raise ServiceRequestError(str(exc), error=exc) from exc
        except httpx.HTTPError as exc:
            raise ServiceResponseError(str(exc), error=exc) from exc
        return _HttpxResponse(request=request, internal_response=response)


@dataclass(frozen=True)
class AnsweredCall:
    """What we keep from ``CallConnectionProperties`` after answering."""

    call_connection_id: str
    server_call_id: str
    correlation_id: str


def media_streaming_options(
    transport_url: str, *, enable_dtmf_tones: bool = True
) -> MediaStreamingOptions:
    """The one media configuration this server answers with (docs/protocols/acs.md §2.3, contract).

    ``enable_dtmf_tones`` (wire ``enableDtmfTones``) makes ACS put ``DtmfData`` messages on the
    media socket (§4.2); ``DTMF_ENABLED=false`` answers without it.
    """
    return MediaStreamingOptions(
        enable_dtmf_tones=enable_dtmf_tones,
        transport_url=transport_url,
        transport_type=StreamingTransportType.WEBSOCKET,
        content_type=MediaStreamingContentType.AUDIO,
        audio_channel_type=MediaStreamingAudioChannelType.MIXED,
        start_media_streaming=True,
        enable_bidirectional=True,
        audio_format=AudioFormat.PCM24_K_MONO,
    )


class AcsRest:
    """The few Call Automation actions the server takes, with errors as :class:`AcsRestError`.

    No method takes a timeout: callers wrap each call in ``trio.fail_after``/``move_on_after``.
    """

    def __init__(self, http: httpx.AsyncClient, client: CallAutomationClient | None) -> None:
        self._http = http
        self._client = client

    def _require_client(self) -> CallAutomationClient:
        if self._client is None:
            raise AcsRestError("no ACS connection string configured")
        return self._client

    async def answer_call(
        self,
        incoming_call_context: str,
        *,
        callback_url: str,
        transport_url: str,
        enable_dtmf_tones: bool = True,
    ) -> AnsweredCall:
        """Answer with bidirectional MIXED pcm24KMono streaming to ``transport_url``."""
        client = self._require_client()
        try:
            props = await client.answer_call(
                incoming_call_context,
                callback_url,
                media_streaming=media_streaming_options(
                    transport_url, enable_dtmf_tones=enable_dtmf_tones
                ),
            )
            return AnsweredCall(
                call_connection_id=_opt_str(props.call_connection_id),
                server_call_id=_opt_str(props.server_call_id),
                correlation_id=_opt_str(props.correlation_id),
            )
        except AzureError as exc:
            raise _rest_error("answer_call", exc) from exc
        except _BAD_RESPONSE as exc:
            raise AcsRestError(f"answer_call: unusable response: {exc!r}") from exc

    async def hang_up(self, call_connection_id: str) -> None:
        """End the call for everyone (``POST …:terminate``, docs/protocols/acs.md §2.4)."""
        client = self._require_client()
        try:
            connection = client.get_call_connection(call_connection_id)
            await connection.hang_up(is_for_everyone=True)
        except AzureError as exc:
            raise _rest_error("hang_up", exc) from exc
        except _BAD_RESPONSE as exc:
            raise AcsRestError(f"hang_up: unusable response: {exc!r}") from exc

    async def transfer_call_to_participant(
        self, call_connection_id: str, target: str, *, operation_context: str
    ) -> None:
        """Transfer the call to ``target`` (``POST …:transferToParticipant``, docs/protocols/acs.md §2.4).

        The outcome arrives later as ``CallTransferAccepted``/``CallTransferFailed`` carrying
        ``operation_context`` (§3).
        """
        client = self._require_client()
        try:
            connection = client.get_call_connection(call_connection_id)
            await connection.transfer_call_to_participant(
                transfer_target(target), operation_context=operation_context
            )
        except AzureError as exc:
            raise _rest_error("transfer_call_to_participant", exc) from exc
        except _BAD_RESPONSE as exc:
            raise AcsRestError(f"transfer_call_to_participant: unusable response: {exc!r}") from exc

    async def get_json(self, url: str) -> Any:
        """GET a small JSON document (the ACS JWKS) with the same trusted client."""
        try:
            response = await self._http.get(url)
        except httpx.HTTPError as exc:
            raise AcsRestError(f"GET {url} failed: {exc!r}") from exc
        if response.status_code != 200:
            raise AcsRestError(
                f"GET {url} -> HTTP {response.status_code}", status_code=response.status_code
            )
        if len(response.content) > _MAX_JSON_BYTES:
            raise AcsRestError(f"GET {url}: body too large", status_code=response.status_code)
        try:
            return json.loads(response.content)
        except ValueError as exc:
            raise AcsRestError(f"GET {url}: not JSON", status_code=response.status_code) from exc


def transfer_target(target: str) -> CommunicationIdentifier:
    """``TRANSFER_TARGET`` as an SDK identifier: ``+E.164`` → phone number, else an ACS user."""
    if target.startswith("+"):
        return PhoneNumberIdentifier(target)
    return CommunicationUserIdentifier(target)


def _opt_str(value: object) -> str:
    """An id from the answer, or "" when ACS sent none (or something that is not a string)."""
    return value if isinstance(value, str) else ""


def _rest_error(action: str, exc: AzureError) -> AcsRestError:
    """Keep the HTTP status and ACS's own error code/message (e.g. a stale incomingCallContext)."""
    if isinstance(exc, HttpResponseError):
        status = exc.status_code
        odata = getattr(exc, "error", None)
        code = getattr(odata, "code", None) or exc.reason or ""
        message = getattr(odata, "message", None) or exc.message
        return AcsRestError(
            f"{action}: HTTP {status} {code}: {message}".strip(), status_code=status
        )
    return AcsRestError(f"{action}: {type(exc).__name__}: {exc.message}")


@asynccontextmanager
async def open_acs_rest(
    connection_string: str | None, *, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[AcsRest]:
    """One httpx client (SSL_CERT_FILE honoured) shared by the SDK client and JWKS fetches."""
    async with httpx.AsyncClient(
        transport=transport, trust_env=True, timeout=_HTTP_TIMEOUT, follow_redirects=False
    ) as http:
        client = None
        if connection_string is not None:
            client = CallAutomationClient.from_connection_string(
                connection_string, transport=HttpxTransport(http)
            )
        try:
            yield AcsRest(http, client)
        finally:
            if client is not None:
                with trio.move_on_after(1, shield=True):
                    await client.close()
