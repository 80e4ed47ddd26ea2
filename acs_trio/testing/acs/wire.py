"""What the simulator puts on the wire, and how it reads what the server sends back.

Pure and synchronous: every builder returns the exact JSON shape of a cited section of
docs/protocols/acs.md, so tests can compare against the document and the media sender can pre-encode
frames once per call.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "AudioFrameEncoder",
    "Outbound",
    "WallClock",
    "audio_metadata",
    "cloud_event",
    "incoming_call_event",
    "parse_outbound",
    "phone_identifier",
]


class WallClock:
    """Maps ``trio.current_time()`` readings to UTC datetimes for wire timestamp strings.

    ACS messages carry real ISO-8601 timestamps, so the wall clock is read exactly once, here, and
    every later timestamp is that anchor plus elapsed Trio time: under a mock clock the strings
    stay consistent with the timeline the simulator measures.
    """

    def __init__(self, trio_now: float, wall_now: dt.datetime | None = None) -> None:
        self._trio0 = trio_now
        self._wall0 = wall_now if wall_now is not None else dt.datetime.now(dt.UTC)

    def at(self, trio_time: float) -> dt.datetime:
        return self._wall0 + dt.timedelta(seconds=trio_time - self._trio0)

    def event_grid(self, trio_time: float) -> str:
        """Event Grid ``eventTime``, e.g. ``2023-04-04T17:18:42.554221Z`` (§1.3)."""
        return self.at(trio_time).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def cloud_event(self, trio_time: float) -> str:
        """CloudEvents ``time``, e.g. ``2022-08-12T03:35:07.817440+00:00`` (§3)."""
        return self.at(trio_time).isoformat(timespec="microseconds")

    def audio(self, trio_time: float) -> str:
        """AudioData ``timestamp``, e.g. ``2024-11-15T19:16:12.925Z`` (§4.2)."""
        return self.at(trio_time).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def phone_identifier(number: str) -> dict[str, Any]:
    """A PSTN identifier; raw id prefix ``4:`` (docs/protocols/acs.md §1.3)."""
    return {"kind": "phoneNumber", "rawId": f"4:{number}", "phoneNumber": {"value": number}}


def incoming_call_event(
    *,
    event_id: str,
    topic: str,
    caller: str,
    recipient: str,
    incoming_call_context: str,
    server_call_id: str,
    correlation_id: str,
    event_time: str,
) -> list[dict[str, Any]]:
    """The Event Grid schema array POSTed to ``/api/incomingCall`` (docs/protocols/acs.md §1.1, §1.3)."""
    source, target = phone_identifier(caller), phone_identifier(recipient)
    return [
        {
            "id": event_id,
            "topic": topic,
            "subject": f"/caller/{source['rawId']}/recipient/{target['rawId']}",
            "data": {
                "to": target,
                "from": source,
                "serverCallId": server_call_id,
                "callerDisplayName": "",
                "customContext": {"sipHeaders": {}, "voipHeaders": {}},
                "incomingCallContext": incoming_call_context,
                "onBehalfOfCallee": target,
                "correlationId": correlation_id,
            },
            "eventType": "Microsoft.Communication.IncomingCall",
            "dataVersion": "1.0",
            "metadataVersion": "1",
            "eventTime": event_time,
        }
    ]


def cloud_event(
    name: str,
    *,
    event_id: str,
    call_connection_id: str,
    server_call_id: str,
    correlation_id: str,
    time: str,
    operation_context: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One Call Automation callback event in the CloudEvents 1.0 envelope (docs/protocols/acs.md §3).

    ``name`` is e.g. ``"CallConnected"``; ``data.type`` is its lower-camel form as in the §3
    example.  Common data fields follow the generated models (§3).
    """
    path = f"calling/callConnections/{call_connection_id}/{name}"
    data: dict[str, Any] = {
        "type": name[0].lower() + name[1:],
        "callConnectionId": call_connection_id,
        "serverCallId": server_call_id,
        "correlationId": correlation_id,
    }
    if operation_context is not None:
        data["operationContext"] = operation_context
    data.update(extra or {})
    return {
        "id": event_id,
        "source": path,
        "type": f"Microsoft.Communication.{name}",
        "data": data,
        "time": time,
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "subject": path,
    }


def audio_metadata(*, subscription_id: str, sample_rate: int) -> str:
    """The first media message (docs/protocols/acs.md §4.2); ``length`` = PCM bytes per 20 ms (§4.3)."""
    return json.dumps(
        {
            "kind": "AudioMetadata",
            "audioMetadata": {
                "subscriptionId": subscription_id,
                "encoding": "PCM",
                "sampleRate": sample_rate,
                "channels": 1,
                "length": sample_rate // 50 * 2,
            },
        }
    )


class AudioFrameEncoder:
    """Builds ``AudioData`` messages (docs/protocols/acs.md §4.2) with the costly part pre-encoded.

    Only the timestamp changes per send, so each frame's JSON tail (raw id, base64 data, silent
    flag) is encoded once by :meth:`tail` and :meth:`message` glues a timestamp in front of it.
    """

    _HEAD = '{"kind": "AudioData", "audioData": {"timestamp": '

    def __init__(self, participant_raw_id: str) -> None:
        self.participant_raw_id = participant_raw_id

    def tail(self, pcm: bytes, *, silent: bool) -> str:
        body = json.dumps(
            {
                "participantRawID": self.participant_raw_id,
                "data": base64.b64encode(pcm).decode("ascii"),
                "silent": silent,
            }
        )
        return ", " + body[1:] + "}"

    def message(self, timestamp: str, tail: str) -> str:
        return self._HEAD + json.dumps(timestamp) + tail


Shape = Literal["documented", "camelCase", "other"]


@dataclass(frozen=True)
class Outbound:
    """One server → ACS message, decoded leniently, with how far it strays from §4.4."""

    kind: Literal["AudioData", "StopAudio", "unknown"]
    shape: Shape
    pcm: bytes = b""
    #: Set when the message breaks the documented format in a way ACS might not forgive.
    problem: str | None = None


def _ci(obj: dict[str, Any], key: str) -> Any:
    """Case-insensitive lookup: the service's parser evidently is (docs/protocols/acs.md §4.4 [INF])."""
    for name, value in obj.items():
        if name.lower() == key.lower():
            return value
    return None


def _shape(msg: dict[str, Any], kind: str) -> Shape:
    inner_key = "AudioData" if kind == "AudioData" else "StopAudio"
    other_key = "StopAudio" if kind == "AudioData" else "AudioData"
    if msg.get("Kind") == kind and set(msg) == {"Kind", "AudioData", "StopAudio"}:
        inner, other = msg[inner_key], msg[other_key]
        inner_ok = set(inner) == {"Data"} if kind == "AudioData" else inner == {}
        if isinstance(inner, dict) and inner_ok and other is None:
            return "documented"
    if "kind" in msg and (inner_key[0].lower() + inner_key[1:]) in msg:
        return "camelCase"
    return "other"


def parse_outbound(message: str | bytes) -> Outbound:
    """Decode a server message; the documented shape is exactly the Python one in §4.4."""
    if isinstance(message, bytes):
        return Outbound("unknown", "other", problem="binary frame (§4.1: text frames of JSON)")
    try:
        msg = json.loads(message)
    except ValueError:
        return Outbound("unknown", "other", problem="not JSON")
    if not isinstance(msg, dict):
        return Outbound("unknown", "other", problem="JSON is not an object")
    kind_value = _ci(msg, "kind")
    kind = kind_value.lower() if isinstance(kind_value, str) else ""
    if kind == "stopaudio":
        return Outbound("StopAudio", _shape(msg, "StopAudio"))
    if kind != "audiodata":
        return Outbound("unknown", "other", problem=f"unknown kind {kind_value!r}")
    shape = _shape(msg, "AudioData")
    inner = _ci(msg, "audioData")
    data = _ci(inner, "data") if isinstance(inner, dict) else None
    if not isinstance(data, str):
        return Outbound("AudioData", shape, problem="AudioData without a Data string")
    try:
        pcm = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return Outbound("AudioData", shape, problem="Data is not valid base64")
    if len(pcm) % 2:
        return Outbound("AudioData", shape, pcm[:-1], problem="odd number of PCM16 bytes")
    return Outbound("AudioData", shape, pcm)
