"""One call, watched: metrics, recording, transcript and JSON logs from the real bridge.

Story (mock clock): the model greets; the caller speaks (turn 1); the model answers with 2 s of
audio in a burst; the caller talks over it 510 ms in (barge-in: StopAudio, truncate); turn 2 gets a
short answer; the caller hangs up at 4 s.  The call runs inside :func:`observe_call`, the same
wrapper the media route uses, with metrics and recordings on.  Then: the Prometheus scrape has the
expected series and counts, the WAV has the caller bit-exact on the left and the agent on the right
cut at the StopAudio instant, the transcript marks speech, answers and the barge-in, and every JSON
log line of the call carries its ids.
"""

from __future__ import annotations

import io
import json
import logging
import random
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio.testing import wait_all_tasks_blocked

from acs_trio.call.bridge import run_call
from acs_trio.call.lifecycle import CallHandle, CallIds, CallSummary, EndReason
from acs_trio.config import AgentSettings, CallLimits
from acs_trio.control.logs import CallContextFilter, json_formatter
from acs_trio.control.metrics import Metrics
from acs_trio.control.observe import observe_call
from tests.fakes import FakeAcs, FakeModel, TrioMediaSocket, open_ws_pair, pcm_tone, record

RATE = 24000
FRAME = RATE * 2 // 50  # bytes of one 20 ms frame


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The scrape, parsed back: {(sample name, sorted labels): value}."""
    text = metrics.expose().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@dataclass
class Story:
    summary: CallSummary
    acs: FakeAcs
    model: FakeModel
    caller_pcm: bytes
    caller_started: float
    stop_at: float
    turn2_first_frame_at: float


@asynccontextmanager
async def json_log_lines() -> AsyncIterator[io.StringIO]:
    """What a LOG_FORMAT=json handler writes for acs_trio's loggers during the block."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(CallContextFilter())
    handler.setFormatter(json_formatter())
    log = logging.getLogger("acs_trio")
    log.addHandler(handler)
    try:
        yield stream
    finally:
        log.removeHandler(handler)


async def watched_call(
    nursery: trio.Nursery, metrics: Metrics | None, recordings: Path | None
) -> Story:
    acs_client, acs_server = await open_ws_pair(nursery)
    acs, model = FakeAcs(acs_client), FakeModel(nursery)
    nursery.start_soon(record, acs_client, acs.seen)
    handle = CallHandle(CallIds("call-1", "corr-1"))
    done: list[CallSummary] = []
    finished = trio.Event()

    async def run() -> None:
        async with observe_call(handle, metrics=metrics, recordings_dir=recordings):
            done.append(
                await run_call(
                    TrioMediaSocket(acs_server),
                    model.connect,
                    handle=handle,
                    agent=AgentSettings(greeting="Greet the caller."),
                    limits=CallLimits(),
                )
            )
        finished.set()

    nursery.start_soon(run)
    await model.connected.wait()
    await wait_all_tasks_blocked()
    t0 = trio.current_time()
    await acs.send_metadata()
    # The caller's line: 4 s of distinct frames (so "bit-exact" means something).
    rng = random.Random(7)
    frames = [rng.randbytes(FRAME) for _ in range(200)]

    async def caller() -> None:
        for n, frame in enumerate(frames):
            await trio.sleep_until(t0 + n * 0.02)
            await acs.send_frame(frame)

    nursery.start_soon(caller)
    await trio.sleep(0.1)
    await model.speak(400)  # greeting
    await model.send(
        {
            "type": "response.output_audio_transcript.done",
            "event_id": "ev_t1",
            "response_id": "resp_0001",
            "item_id": "item_0002",
            "output_index": 0,
            "content_index": 0,
            "transcript": "Hello, how can I help?",
        }
    )
    await trio.sleep_until(t0 + 1.0)
    await model.speech_started()
    await trio.sleep_until(t0 + 1.5)
    await model.speech_stopped()
    await model.send(
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "event_id": "ev_t2",
            "item_id": "item_user",
            "content_index": 0,
            "transcript": "I would like to check my order.",
        }
    )
    await trio.sleep(0.2)
    response_id, item_id = await model.start_response()
    for _ in range(20):  # 2 s of answer as a burst
        await model.audio_delta(response_id, item_id, pcm_tone(100, 3000))
    await trio.sleep(0.51)
    await model.speech_started()  # barge-in
    await model.finish_response(response_id, item_id, status="cancelled")
    await trio.sleep_until(t0 + 2.8)
    await model.speech_stopped()
    await trio.sleep(0.3)
    await model.speak(300, value=5000)
    await trio.sleep_until(t0 + 4.0)
    await acs.ws.aclose(1000)  # the caller hangs up
    await finished.wait()
    await wait_all_tasks_blocked()
    [stop_at] = acs.stop_audio_times()
    turn2 = [t for t, pcm in acs.audio_out() if pcm == pcm_tone(20, 5000)]
    return Story(done[0], acs, model, b"".join(frames), t0, stop_at, turn2[0])


def read_recording(directory: Path, call_id: str) -> tuple[Any, list[Any], Any]:
    """(stereo samples[n, 2], transcript lines, summary) of the one recording of ``call_id``."""
    [wav_path] = directory.glob(f"*/*_{call_id}.wav")
    with wave.open(str(wav_path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, RATE)
        stereo = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    transcript = wav_path.with_suffix(".transcript.jsonl").read_text()
    lines = [json.loads(line) for line in transcript.splitlines()]
    return stereo, lines, json.loads(wav_path.with_suffix(".summary.json").read_text())


async def test_metrics_after_a_call(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    metrics = Metrics()
    story = await watched_call(nursery, metrics, None)
    summary = story.summary
    assert summary.end_reason is EndReason.CALLER_HUNG_UP
    assert summary.turns == 2
    got = samples(metrics)

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert value("acs_trio_calls_ended_total", reason="caller_hung_up") == 1
    assert value("acs_trio_calls_ended_total", reason="model_connect_failed") == 0
    # One TTFA observation per turn, one for the greeting, at the summary's values.
    assert value("acs_trio_time_to_first_audio_seconds_count", kind="turn") == summary.turns
    assert value("acs_trio_time_to_first_audio_seconds_sum", kind="turn") == pytest.approx(
        sum(summary.ttfa_ms) / 1000
    )
    assert value("acs_trio_time_to_first_audio_seconds_count", kind="greeting") == 1
    assert value("acs_trio_barge_in_latency_seconds_count") == 1
    assert value("acs_trio_barge_in_latency_seconds_sum") == pytest.approx(
        summary.barge_in_latency_ms[0] / 1000
    )
    # Barge-in 510 ms after the answer's first frame: 620 ms written, 110 ms not yet played.
    assert value("acs_trio_truncate_error_seconds_sum") == pytest.approx(0.11)
    assert value("acs_trio_call_duration_seconds_count") == 1
    assert value("acs_trio_call_duration_seconds_sum") == pytest.approx(summary.duration_s)
    assert value("acs_trio_call_teardown_seconds_count") == 1
    assert value("acs_trio_turns_total") == 2
    assert value("acs_trio_channel_waits_total", channel="inbound") == 0
    # No label carries a call id.
    assert not any("call-1" in str(labels) for _, labels in got)


async def test_recording_has_the_caller_bit_exact_and_the_agent_as_heard(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    story = await watched_call(nursery, None, tmp_path)
    summary = story.summary
    stereo, lines, saved = read_recording(tmp_path, "call-1")
    left, right = stereo[:, 0].tobytes(), stereo[:, 1]

    # Left: silence until the first frame, then every caller frame exactly as ACS sent it.
    offset = left.index(story.caller_pcm[:64])
    assert left[offset : offset + len(story.caller_pcm)] == story.caller_pcm
    assert left[:offset] == bytes(offset)

    # Right: the interrupted answer stops at the StopAudio instant; nothing until turn 2.
    def at(t: float) -> int:
        return round((t - summary.started_at) * RATE)

    stop, turn2 = at(story.stop_at), at(story.turn2_first_frame_at)
    assert right[stop - 1] == 3000  # still playing the answer the sample before
    assert not right[stop:turn2].any()  # flushed: never heard
    assert right[turn2] == 5000
    # The answer had been written 620 ms in (110 ms ahead of playback): 510 ms of it was heard.
    assert np.count_nonzero(right == 3000) == round(0.51 * RATE)

    kinds = [(line["type"], line.get("role")) for line in lines]
    assert kinds == [
        ("call_started", None),
        ("first_audio", None),
        ("transcript", "agent"),
        ("speech_started", "caller"),
        ("speech_stopped", "caller"),
        ("transcript", "caller"),
        ("first_audio", None),
        ("speech_started", "caller"),
        ("barge_in", None),
        ("speech_stopped", "caller"),
        ("first_audio", None),
        ("call_ended", None),
    ]
    barge_in = lines[8]
    assert barge_in["t_ms"] == round((story.stop_at - summary.started_at) * 1000)
    assert barge_in["flushed_ms"] == pytest.approx(110, abs=0.1)
    assert lines[5]["text"] == "I would like to check my order."
    assert lines[-1]["end_reason"] == "caller_hung_up"

    assert saved["end_reason"] == "caller_hung_up"
    assert saved["ttfa_ms"] == [round(v, 1) for v in summary.ttfa_ms]
    assert saved["recording"]["dropped_ms"] == 0


async def test_json_log_lines_carry_the_call_ids(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async with json_log_lines() as stream:
        story = await watched_call(nursery, Metrics(), None)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    call_lines = [line for line in lines if line["logger"] == "acs_trio.call.bridge"]
    assert len(call_lines) >= 3
    assert all(line["call_id"] == "call-1" for line in call_lines)
    assert all(line["correlation_id"] == "corr-1" for line in call_lines)
    [ended] = [line for line in call_lines if "] call ended " in line["message"]]
    assert ended["end_reason"] == "caller_hung_up"
    assert ended["turns"] == 2
    assert ended["ttfa_ms"] == [round(v, 1) for v in story.summary.ttfa_ms]
    assert ended["barge_ins"] == 1
    assert ended["level"] == "INFO"
