"""The offline demo, end to end: simulated ACS → server → local test peer, on real sockets.

Story: the caller hears the recorded greeting, says something (1.5 s), hears the peer echo it,
talks over the echo 0.8 s in; the server sends StopAudio and truncates the echo; the caller hears
the echo of its second utterance, and the peer (scripted) calls end_call with that echo: the server
hangs up over REST once it has played (end reason agent_hung_up).  The demo writes call.wav, report.json and
timeline.png.  Real time (the simulator streams 20 ms frames on the clock), so the caller's WAV is
a short synthetic one: the whole call takes ~8 s.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from acs_trio.demo import offline_call as demo
from acs_trio.testing.acs import CallOptions
from acs_trio.testing.acs.audio import write_wav

RATE = 24000
FRAME = RATE // 50  # 20 ms
#: The local peer's greeting.wav lasts 2.375 s.
GREETING_S = 2.375
UTTERANCE_1_S, GAP_S, UTTERANCE_2_S = 1.5, 1.0, 0.5


def tone(seconds: float, hz: float = 300.0) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (6000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


@pytest.fixture
def caller_wav(tmp_path: Path) -> Path:
    """Two utterances split by the longest silence (the simulator's rule)."""
    silence = np.zeros(round(GAP_S * RATE), dtype=np.int16)
    path = tmp_path / "caller.wav"
    write_wav(path, RATE, np.concatenate([tone(UTTERANCE_1_S), silence, tone(UTTERANCE_2_S, 500)]))
    return path


def voiced(channel: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    """One bool per 20 ms frame in [start_s, end_s): RMS above ~-50 dBFS."""
    chunk = channel[round(start_s * RATE) : round(end_s * RATE)].astype(np.float64)
    frames = chunk[: len(chunk) // FRAME * FRAME].reshape(-1, FRAME)
    return np.asarray(np.sqrt((frames**2).mean(axis=1)) > 100)


def first_segment_s(flags: np.ndarray, bridge_frames: int = 25) -> tuple[float, float]:
    """Start and end (s) of the first voiced stretch, bridging pauses shorter than 0.5 s."""
    on = np.flatnonzero(flags)
    start = end = int(on[0])
    for i in on[1:]:
        if i - end > bridge_frames:
            break
        end = int(i)
    return start * 0.02, (end + 1) * 0.02


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def test_offline_demo_call(tmp_path: Path, caller_wav: Path) -> None:
    out = tmp_path / "demo-out"
    options = CallOptions(barge_in=True, barge_in_delay_s=0.8, lead_in_s=0.2, quiet_s=0.4)
    result = await demo.run_demo(out, wav=caller_wav, options=options)
    assert result.ok, result.failure
    assert sorted(p.name for p in out.iterdir()) == [
        "call.wav",
        "recordings",
        "report.json",
        "timeline.png",
    ]
    check_server_recording(out / "recordings")

    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    sim, [peer], server = report["simulator"], report["peer"], report["server"]
    assert report["ok"] and "LOCAL TEST PEER" in report["agent"]
    turn1, turn2 = sim["turns"]
    assert not turn1["barge_in"] and turn2["barge_in"]
    [stop_s] = sim["stop_audio_s"]

    # The recording: stereo, caller left, agent right as the caller heard it.
    rate, stereo = demo.read_stereo(out / "call.wav")
    assert rate == RATE and stereo.shape[1] == 2
    caller, agent = stereo[:, 0], stereo[:, 1]
    # The caller's two utterances are on the left, nothing of the agent is.
    assert voiced(caller, turn1["speech_start_s"], turn1["speech_end_s"]).mean() > 0.9
    assert not voiced(caller, 0, turn1["speech_start_s"] - 0.05).any()
    # The greeting: right channel, starting near the start, about as long as greeting.wav.
    greeting_start, greeting_end = first_segment_s(voiced(agent, 0, turn1["speech_start_s"]))
    assert greeting_start < 1.0
    assert GREETING_S - 0.5 < greeting_end - greeting_start < GREETING_S + 0.2
    # The echo of utterance 1 is heard after the caller stopped, until the barge-in...
    assert turn1["first_audio_s"] > turn1["speech_end_s"]
    assert voiced(agent, turn1["first_audio_s"], stop_s).sum() >= 10  # ≥ 200 ms of echo
    # ...then StopAudio cuts it within 200 ms, although the echo (~1.8 s) would have gone on.
    [echo_1, _] = peer["turns"]
    assert echo_1["echo_ms"] / 1000 > stop_s - turn1["first_audio_s"] + 0.5
    assert not voiced(agent, stop_s + 0.2, turn2["first_audio_s"]).any()
    # The answer to utterance 2 (its echo) is heard after the caller stopped.
    assert voiced(agent, turn2["first_audio_s"], turn2["first_audio_s"] + 1.0).sum() >= 10

    # The figures.
    for turn in (turn1, turn2):
        assert 50 < turn["ttfa_ms"] < 3000
    assert 0 <= turn2["stop_audio_latency_ms"] < 300
    [truncation] = peer["truncations"]
    assert 0 < truncation["audio_end_ms"] < echo_1["echo_ms"]
    assert server["truncated_at_ms"] == [truncation["audio_end_ms"]]
    assert sim["frames_sent"] > 0 and sim["frames_received"] > 0
    # The server ended the call: a caller frame or two in flight when it closed are not read.
    assert sim["frames_sent"] - 2 <= server["frames_in"] <= sim["frames_sent"]
    assert server["frames_out"] == sim["frames_received"]
    # The agent hung up: end_call with the last echo, REST terminate once it had played.
    assert peer["function_calls"] == ["end_call"]
    assert server["end_reason"] == "agent_hung_up"
    assert server["tool_calls"] == 1
    assert sim["hung_up_by"] == "server (REST terminate (hang_up for everyone))"
    assert 0 <= sim["hang_up_after_played_ms"] < 300  # not before the goodbye had played
    assert png_size((out / "timeline.png").read_bytes()) == (1200, 540)

    text = demo.summary_text(result)
    assert "OK" in text and "not a language model" in text
    assert "server end reason agent_hung_up" in text and "called end_call" in text
    assert f"audio_end_ms={truncation['audio_end_ms']}" in text


def check_server_recording(directory: Path) -> None:
    """The server's own recorder wrote the call (the production code path, RECORDINGS_DIR)."""
    [wav] = directory.glob("*/*.wav")
    rate, stereo = demo.read_stereo(wav)
    assert rate == RATE
    # The caller's first utterance is on the left exactly as the simulator sent it.
    assert tone(UTTERANCE_1_S)[: RATE // 2].tobytes() in stereo[:, 0].tobytes()
    lines = [
        json.loads(line) for line in wav.with_suffix(".transcript.jsonl").read_text().splitlines()
    ]
    kinds = [line["type"] for line in lines]
    assert kinds[0] == "call_started" and kinds[-1] == "call_ended"
    assert kinds.count("barge_in") == 1
    agent = [line["text"] for line in lines if line.get("role") == "agent"]
    assert agent[0] == "Hi, test agent here. How can I help?"
    summary = json.loads(wav.with_suffix(".summary.json").read_text())
    assert summary["end_reason"] == "agent_hung_up"  # the peer says goodbye with end_call


def test_bad_wav_is_refused_before_anything_starts(tmp_path: Path) -> None:
    assert demo.main(["--out", str(tmp_path / "out"), "--wav", str(tmp_path / "none.wav")]) == 2
    assert not (tmp_path / "out").exists()
