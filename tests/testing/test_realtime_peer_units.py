"""The local peer's pure parts, without sockets: the energy VAD, the input buffer, the codec and
the session state machine fed frame by frame."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest

from acs_trio.testing.realtime import LocalPeerSettings, PeerSession, PeerStats
from acs_trio.testing.realtime.inputs import InputBuffer
from acs_trio.testing.realtime.protocol import (
    IdFactory,
    PeerRequestError,
    default_session,
    merge_session_update,
)
from acs_trio.testing.realtime.responses import ResponsePlan
from acs_trio.testing.realtime.vad import EnergyVad, VadConfig, dbfs, threshold_to_dbfs
from tests.testing.test_realtime_peer import silence, tone

VAD_ON = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "create_response": True,
    "interrupt_response": True,
}


def turns(vad: EnergyVad, pcm: bytes, piece: int) -> list[tuple[str, int]]:
    found = []
    for offset in range(0, len(pcm), piece):
        found += [(e.kind, e.ms) for e in vad.feed(pcm[offset : offset + piece])]
    return found


def test_levels_and_threshold_map() -> None:
    assert dbfs(tone(100, dbfs=-20.0)) == pytest.approx(-20.0, abs=0.05)
    assert dbfs(silence(100)) == -math.inf
    assert dbfs(b"") == -math.inf
    assert (threshold_to_dbfs(0.0), threshold_to_dbfs(0.5), threshold_to_dbfs(1.0)) == (
        -70.0, -40.0, -10.0,
    )  # fmt: skip


@pytest.mark.parametrize("piece", [7, 960, 4801, 10**6])
def test_vad_boundaries_do_not_depend_on_chunking(piece: int) -> None:
    audio = silence(500) + tone(400) + silence(300) + tone(200) + silence(700) + tone(100)
    # The 300 ms gap is shorter than the 500 ms silence duration: one turn, not two.
    assert turns(EnergyVad(VadConfig()), audio, piece) == [
        ("started", 200),  # 500 ms - 300 ms padding
        ("stopped", 1900),  # last voiced frame ends at 1400 ms, + 500 ms
        ("started", 1900),  # 2100 ms - 300 ms would reach into the committed turn: clamped
    ]


def test_vad_threshold_and_padding_follow_the_config() -> None:
    vad = EnergyVad(VadConfig(threshold_dbfs=-10.0, prefix_padding_ms=0, silence_duration_ms=200))
    audio = tone(300, dbfs=-20.0) + silence(100) + tone(300, dbfs=-5.0) + silence(300)
    assert turns(vad, audio, 480) == [("started", 400), ("stopped", 900)]


def test_idle_input_buffer_keeps_only_the_padding_window() -> None:
    buffer = InputBuffer(LocalPeerSettings(), VAD_ON)
    for _ in range(60):
        assert buffer.append(silence(1000)) == []
    assert buffer.buffered_ms() == 320  # 300 ms of prefix padding + two 10 ms frames
    off = InputBuffer(LocalPeerSettings(max_input_buffer_s=2.0), None)
    for _ in range(5):
        off.append(tone(1000))
    assert off.buffered_ms() == 2000


def test_merge_session_update_rules() -> None:
    ids = IdFactory(seed=1)
    current = default_session(ids, model="m", expires_at=0)
    no_vad = {"input": {"turn_detection": None}}
    merged = merge_session_update(
        current, {"type": "realtime", "model": "other", "tools": [], "audio": no_vad}
    )
    assert merged["model"] == "m"  # "model cannot change" (docs/protocols/realtime.md §2.1)
    assert merged["audio"]["input"]["turn_detection"] is None
    assert current["audio"]["input"]["turn_detection"] is not None  # not mutated
    with pytest.raises(PeerRequestError) as err:
        merge_session_update(current, {"type": "transcription"})
    assert err.value.param == "session.type"
    with pytest.raises(PeerRequestError) as err:
        merge_session_update(current, {"type": "realtime", "output_modalities": ["audio", "text"]})
    assert err.value.param == "session.output_modalities"


def test_ids_look_like_the_service_and_a_seed_repeats_them() -> None:
    first, again = IdFactory(seed=7), IdFactory(seed=7)
    item = first.new("item")
    assert item == again.new("item")
    assert item.startswith("item_")
    assert len(item) == len("item_") + 21


def _session(**settings: Any) -> PeerSession:
    return PeerSession(LocalPeerSettings(**settings), PeerStats(), greeting=tone(250), expires_at=0)


def _append(session: PeerSession, pcm: bytes) -> list[Any]:
    message = {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}
    return session.receive(json.dumps(message))


def test_two_turns_in_one_append_commit_the_right_audio() -> None:
    session = _session()
    out = _append(session, silence(1000) + tone(400) + silence(1000) + tone(300) + silence(600))
    kinds = [o["type"] if isinstance(o, dict) else "PLAN" for o in out]
    assert kinds.count("input_audio_buffer.committed") == 2
    # The first turn gets a response; the second cuts it (interrupt_response) and gets its own.
    plans = [o for o in out if isinstance(o, ResponsePlan)]
    assert [len(p.audio) // 48 for p in plans] == [700, 600]  # 700..1400 ms and 2100..2700 ms
    assert session.stats.turns == [(700, 1900), (2100, 3200)]
    assert session.stats.cancels == ["turn_detected"]
    assert plans[0].finished
    assert session.next_chunk(plans[0]) == []


def test_create_response_false_only_reports_turns() -> None:
    session = _session()
    update = {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
        "turn_detection": {**VAD_ON, "create_response": False}}}}}  # fmt: skip
    session.receive(json.dumps(update))
    out = _append(session, tone(200) + silence(600))
    assert not any(isinstance(o, ResponsePlan) for o in out)
    assert session.stats.turns == [(0, 700)]


def test_completed_response_streams_in_chunks_then_closes_once() -> None:
    session = _session(chunk_ms=100)
    (*opening, plan) = session.receive('{"type": "response.create"}')
    assert [e["type"] for e in opening] == [
        "response.created", "response.output_item.added", "response.content_part.added",
    ]  # fmt: skip
    chunks = []
    while events := session.next_chunk(plan):
        chunks.append(events)
    assert len(chunks) == 3  # 250 ms of greeting: 100 + 100 + 50
    closing = session.complete(plan)
    assert closing[-2]["response"]["status"] == "completed"
    assert session.complete(plan) == []
    assert session.active is None


def _drain(session: PeerSession, outgoing: list[Any]) -> list[dict[str, Any]]:
    """Every event a connection would send for ``outgoing``, streaming plans to the end."""
    events: list[dict[str, Any]] = []
    for item in outgoing:
        if isinstance(item, ResponsePlan):
            while chunk := session.next_chunk(item):
                events += chunk
            events += session.complete(item)
        else:
            events.append(item)
    return events


@pytest.mark.parametrize("offered", [True, False])
def test_scripted_end_call_after_the_nth_phrase(offered: bool) -> None:
    settings = LocalPeerSettings(end_call_after_turns=2, id_seed=7)
    stats = PeerStats()
    session = PeerSession(settings, stats, greeting=silence(100), expires_at=0)
    tools = [{"type": "function", "name": "end_call", "parameters": {}}] if offered else []
    session.receive(
        json.dumps({"type": "session.update", "session": {"type": "realtime", "tools": tools}})
    )
    names: list[list[str]] = []
    for _ in range(2):  # two phrases, each committed and answered by an echo
        audio = base64.b64encode(tone(300)).decode()
        session.receive(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        session.receive(json.dumps({"type": "input_audio_buffer.commit"}))
        events = _drain(session, session.receive(json.dumps({"type": "response.create"})))
        names.append(
            [e["name"] for e in events if e["type"] == "response.function_call_arguments.done"]
        )
        if names[-1]:
            # GA order (docs/protocols/realtime.md §3.2): the call's item closes before response.done.
            kinds = [e["type"] for e in events]
            assert kinds.index(
                "response.output_item.done", kinds.index("response.function_call_arguments.done")
            ) < kinds.index("response.done")
            [done] = [e for e in events if e["type"] == "response.done"]
            assert [o["type"] for o in done["response"]["output"]] == ["message", "function_call"]
    assert names == ([[], ["end_call"]] if offered else [[], []])
    assert stats.function_calls == (["end_call"] if offered else [])
