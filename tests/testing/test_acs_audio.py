"""WAV framing and splitting, the ACS playout model, and the report maths."""

from __future__ import annotations

import numpy as np
import pytest

from acs_trio.testing.acs.audio import (
    Clip,
    PlayoutTrack,
    frames_of,
    load_wav,
    split_at_longest_silence,
)
from acs_trio.testing.acs.report import (
    AggregateReport,
    CallReport,
    TurnReport,
    finish_turns,
    percentile,
    render_aggregate,
    render_call,
)

RATE = 24000


def tone(seconds: float, amplitude: int = 4000) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * 300 * t)).astype(np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), dtype=np.int16)


def test_split_cuts_in_the_middle_of_the_longest_silence() -> None:
    samples = np.concatenate(
        [silence(0.2), tone(0.5), silence(0.1), tone(0.3), silence(1.0), tone(0.4), silence(0.2)]
    )
    first, second = split_at_longest_silence(Clip(RATE, samples))
    assert second is not None
    assert first.duration_s == pytest.approx(0.2 + 0.5 + 0.1 + 0.3 + 0.5, abs=0.021)
    assert first.duration_s + second.duration_s == pytest.approx(len(samples) / RATE)


def test_split_without_a_long_gap_keeps_one_utterance() -> None:
    clip = Clip(RATE, np.concatenate([tone(0.5), silence(0.1), tone(0.5)]))
    assert split_at_longest_silence(clip) == (clip, None)


def test_packaged_caller_wav_has_two_utterances() -> None:
    clip = load_wav()
    first, second = split_at_longest_silence(clip)
    assert clip.rate == RATE
    assert second is not None
    assert 1.0 < first.duration_s < 4.0
    assert 1.0 < second.duration_s < 4.0


def test_frames_are_20ms_and_zero_padded() -> None:
    frames = frames_of(Clip(RATE, tone(0.05)))
    assert [len(f) for f in frames] == [480, 480, 480]
    assert not frames[-1][240:].any()
    assert len(frames_of(Clip(RATE, tone(0.02)).resampled(16000))[0]) == 320


def test_playout_queues_audio_sent_ahead_and_stop_flushes_it() -> None:
    track = PlayoutTrack(RATE)
    chunk = tone(0.1).tobytes()
    for _ in range(5):  # 500 ms of audio arrives at once, at t = 1 s
        track.add(1.0, chunk)
    assert track.play_end_s == pytest.approx(1.5)
    assert track.max_lead_ms == pytest.approx(500)
    assert track.stop(1.2) == pytest.approx(300)
    assert track.play_end_s == 1.2
    heard = track.render(2.0)
    assert not heard[:RATE].any()
    assert heard[RATE : round(1.2 * RATE)].any()
    assert not heard[round(1.2 * RATE) :].any()
    assert track.received_ms == pytest.approx(500)


def test_playout_counts_underruns_inside_a_turn_only() -> None:
    track = PlayoutTrack(RATE)
    chunk = tone(0.1).tobytes()
    track.add(0.0, chunk)
    track.add(0.1, chunk)  # on time
    track.add(0.3, chunk)  # 100 ms dry: a gap
    track.add(3.0, chunk)  # new turn: not a gap
    track.stop(3.05)
    track.add(3.5, chunk)  # after StopAudio: not a gap
    assert track.gaps_ms == [pytest.approx(100)]


def test_turn_timings_from_arrival_times() -> None:
    turns = [TurnReport(1, 1.0, 2.0), TurnReport(2, 3.0, 4.0, barge_in=True)]
    finish_turns(turns, audio_s=[0.5, 2.8, 2.9, 4.25], stops_s=[0.1, 3.4])
    assert [t.ttfa_ms for t in turns] == [800.0, 250.0]
    assert turns[1].stop_audio_latency_ms == 400.0
    assert turns[0].stop_audio_latency_ms is None


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 100)) == (
        50,
        95,
        100,
    )
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7.0


def test_aggregate_report_reads_well_and_serialises() -> None:
    good = CallReport(0, "4:+1", answer_ms=40.0, turns=[TurnReport(1, 1.0, 2.0, first_audio_s=2.5)])
    bad = CallReport(1, "4:+2")
    bad.fail("timed out waiting for the greeting")
    bad.deviation("AudioData not in the documented §4.4 shape (camelCase)")
    report = AggregateReport([good, bad], wall_s=3.0)
    text = render_aggregate(report)
    assert "2 calls, 1 failed" in text
    assert "call 1 failed: timed out waiting for the greeting" in text
    assert "time to first audio p50 500ms" in text
    assert "turn 1: time to first audio 500 ms" in render_call(good)
    data = report.to_json()
    assert data["failed"] == 1
    assert data["per_call"][0]["turns"][0]["ttfa_ms"] == 500.0
    assert data["deviations"] == {"AudioData not in the documented §4.4 shape (camelCase)": 1}
