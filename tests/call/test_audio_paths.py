"""The sync audio paths: caller frames → appends, model deltas → 20 ms frames."""

from __future__ import annotations

import base64
import json

import pytest

from acs_trio.call.agent_audio import AgentAudio
from acs_trio.call.caller_audio import CallerAudio
from acs_trio.errors import ProtocolError
from acs_trio.wire.acs_media import AudioData, AudioMetadata
from acs_trio.wire.realtime import AudioDelta


def frame(pcm: bytes = b"\x01\x00" * 480, *, silent: bool = False) -> AudioData:
    return AudioData("", None, pcm, silent)


def test_caller_frames_are_batched_into_appends() -> None:
    caller = CallerAudio(append_batch_ms=60)
    assert caller.push(frame()) is None
    assert caller.push(frame(b"", silent=True)) is None  # silence without data still counts
    message = caller.push(frame())
    assert message is not None
    audio = base64.b64decode(json.loads(message)["audio"])
    assert audio == b"\x01\x00" * 480 + b"\x00\x00" * 480 + b"\x01\x00" * 480


def test_caller_audio_rejects_formats_it_cannot_carry() -> None:
    with pytest.raises(ProtocolError, match="unsupported"):
        CallerAudio(60).configure(AudioMetadata("s", "PCM", 44100, 1, 1764))


def test_deltas_become_whole_frames_and_the_tail_is_flushed() -> None:
    agent = AgentAudio(frame_ms=20)
    frames = agent.frames(AudioDelta("r1", "i1", 0, b"\x02\x00" * 1000))  # 41.67 ms
    assert [len(f.pcm) for f in frames] == [960, 960]
    tail = agent.flush()
    assert [len(f.pcm) for f in tail] == [80]
    assert tail[0].ms == pytest.approx(80 / 48)
    assert agent.received_ms("i1") == pytest.approx(1000 / 24)


def test_a_new_item_flushes_the_previous_tail_first() -> None:
    agent = AgentAudio(frame_ms=20)
    agent.frames(AudioDelta("r1", "i1", 0, b"\x00" * 100))
    frames = agent.frames(AudioDelta("r1", "i2", 0, b"\x00" * 960))
    assert [(f.item_id, len(f.pcm)) for f in frames] == [("i1", 100), ("i2", 960)]


def test_cut_responses_produce_no_frames_but_new_ones_do() -> None:
    agent = AgentAudio(frame_ms=20)
    agent.frames(AudioDelta("r1", "i1", 0, b"\x00" * 960))
    assert agent.cut_all() == 1
    assert agent.frames(AudioDelta("r1", "i1", 0, b"\x00" * 960)) == []
    assert len(agent.frames(AudioDelta("r2", "i2", 0, b"\x00" * 960))) == 1


def test_sixteen_khz_calls_get_640_byte_frames() -> None:
    agent = AgentAudio(frame_ms=20)
    agent.set_rate(16000)
    frames = agent.frames(AudioDelta("r1", "i1", 0, b"\x00\x01" * 2400))  # 100 ms at 24 kHz
    assert {len(f.pcm) for f in frames} == {640}
    assert sum(f.ms for f in frames + agent.flush()) == pytest.approx(100, abs=1)


def test_a_cut_resets_the_output_resampler() -> None:
    """After a barge-in the next answer starts from a clean filter: no tail of the cut one."""

    def delta(response_id: str, value: int) -> AudioDelta:
        return AudioDelta(
            response_id, f"item_{response_id}", 0, value.to_bytes(2, "little", signed=True) * 2400
        )

    cut = AgentAudio(20)
    cut.set_rate(16000)
    cut.frames(delta("r1", 20000))  # a loud answer, cut mid-way
    cut.cut_all()
    fresh = AgentAudio(20)
    fresh.set_rate(16000)
    fresh.seq_of("r0")  # same numbering as the cut one
    assert [f.pcm for f in cut.frames(delta("r2", 100))] == [
        f.pcm for f in fresh.frames(delta("r2", 100))
    ]
