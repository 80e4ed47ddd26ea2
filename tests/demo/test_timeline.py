"""The call picture: what each lane shows, where each mark sits, and the PNG it writes."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from acs_trio.demo.timeline import COLORS, Line, call_picture, waveform, write_png
from acs_trio.testing.acs.report import CallReport, TurnReport

RATE = 1000  # samples per second: one sample per millisecond keeps the arithmetic readable


def a_call() -> tuple[CallReport, np.ndarray]:
    """8 s: greeting heard at 0.2 s; utterance 1 at 1–2 s answered at 2.5 s; utterance 2 at
    3–4 s barges in on that answer, StopAudio at 3.004 s; its answer is heard from 5 s."""
    stereo = np.zeros((8 * RATE, 2), dtype=np.int16)
    stereo[1000:2000, 0] = 16000
    stereo[3000:4000, 0] = -16000
    stereo[200:900, 1] = 8000
    stereo[2500:3004, 1] = 8000
    stereo[5000:6000, 1] = 8000
    report = CallReport(index=1, caller="+1", greeting_first_audio_s=0.2, stop_audio_s=[3.004])
    report.turns = [
        TurnReport(1, 1.0, 2.0, first_audio_s=2.5),
        TurnReport(2, 3.0, 4.0, first_audio_s=5.0, barge_in=True, stop_audio_latency_ms=4.0),
    ]
    return report, stereo


def texts(fig: Figure) -> list[str]:
    return [t.get_text().strip() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]


def lines_at(fig: Figure, gid: str) -> list[float]:
    return sorted(
        float(line.get_xdata()[0]) for line in fig.findobj(Line2D) if line.get_gid() == gid
    )


def test_waveform_is_the_min_and_max_of_each_slice() -> None:
    samples = np.array([0, 100, -200, 50, 3000, -32768, 0, 0], dtype=np.int16)
    t, low, high = waveform(samples, rate=4, columns=4)
    assert list(t) == [0, 0.5, 1.0, 1.5]
    assert list(low * 32768) == [0, -200, -32768, 0]
    assert list(high * 32768) == [100, 50, 3000, 0]


def test_each_lane_draws_its_own_channel() -> None:
    report, stereo = a_call()
    caller_ax, agent_ax = call_picture(report, [504], RATE, stereo).axes
    [caller] = [c for c in caller_ax.collections if c.get_gid() == "caller"]
    [agent] = [c for c in agent_ax.collections if c.get_gid() == "agent"]
    assert isinstance(caller, PolyCollection) and isinstance(agent, PolyCollection)

    def loud_at(collection: PolyCollection, t_s: float) -> bool:
        vertices = collection.get_paths()[0].vertices
        near = np.abs(vertices[:, 0] - t_s) < 0.02
        return bool(np.abs(vertices[near, 1]).max() > 0.2)

    assert loud_at(caller, 1.5) and loud_at(caller, 3.5)
    assert not loud_at(caller, 0.5) and not loud_at(caller, 2.5) and not loud_at(caller, 6)
    assert loud_at(agent, 0.5) and loud_at(agent, 2.7) and loud_at(agent, 5.5)
    assert not loud_at(agent, 1.5) and not loud_at(agent, 3.5)
    assert caller_ax.get_xlim() == (0, 8.0)


def test_marks_sit_at_the_reports_times_and_say_what_they_are() -> None:
    report, stereo = a_call()
    fig = call_picture(report, [504], RATE, stereo)
    caller_ax, agent_ax = fig.axes
    # StopAudio across both lanes, first audio (greeting and both answers) on the agent lane.
    assert lines_at(fig, "stop_audio") == [3.004, 3.004]
    assert lines_at(fig, "first_audio") == [0.2, 2.5, 5.0]
    utterances = [p for p in caller_ax.patches if p.get_gid() == "utterance"]
    assert [(p.get_x(), p.get_x() + p.get_width()) for p in utterances] == [(1, 2), (3, 4)]
    [cut] = [p for p in agent_ax.patches if p.get_gid() == "truncate"]
    assert isinstance(cut, Rectangle)
    assert (cut.get_x(), round(cut.get_x() + cut.get_width(), 3)) == (2.5, 3.004)
    words = texts(fig)
    for expected in (
        "utterance 1",
        "utterance 2",
        "barge-in",
        "greeting",
        "TTFA 500 ms",
        "TTFA 1000 ms",
        "StopAudio +4 ms",
        "truncate: audio_end_ms=504",
        "caller audio",
        "agent audio (as heard)",
        "StopAudio sent",
        "time since the media socket opened (s)",
    ):
        assert expected in words, expected


def test_a_call_without_barge_in_has_no_stop_or_cut_marks() -> None:
    report, stereo = a_call()
    report.stop_audio_s = []
    report.turns[1].barge_in = False
    fig = call_picture(report, [], RATE, stereo)
    assert lines_at(fig, "stop_audio") == []
    assert not [p for p in fig.axes[1].patches if p.get_gid() == "truncate"]
    assert "barge-in" not in texts(fig)


def test_transcript_lines_get_their_own_lane() -> None:
    report, stereo = a_call()
    lines = [Line(1.0, "caller", "what time is it"), Line(2.5, "agent", "it is noon")]
    fig = call_picture(report, [504], RATE, stereo, transcript=lines)
    assert len(fig.axes) == 3
    lane = {t.get_text(): t for t in fig.axes[2].texts}
    assert lane["caller: what time is it"].get_position()[0] == 1.0
    assert lane["agent: it is noon"].get_color() == COLORS["agent"]


def test_png_has_the_figures_size(tmp_path: Path) -> None:
    report, stereo = a_call()
    path = tmp_path / "timeline.png"
    write_png(path, call_picture(report, [504], RATE, stereo))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">4sII", data[12:24]) == (b"IHDR", 1200, 540)
